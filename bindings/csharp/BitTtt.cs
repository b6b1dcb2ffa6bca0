// Bit-TTT for C# (.NET, Mono, Unity): P/Invoke over the C ABI in include/bit_ttt.h.
//
// Conventions kept here so that IL2CPP (Unity's AOT compiler) accepts the file as it is:
// - [DllImport] with Cdecl; strings cross as UTF-8 byte arrays with explicit lengths, never as
//   ANSI strings; bool fields as bytes.
// - Callbacks are static methods marked [MonoPInvokeCallback]; they find their instance through a
//   GCHandle passed as user_data.
// - Handles are SafeHandles, so a forgotten Dispose still frees the native object.
// Written for C# 7.2 (Mono's mcs) and builds unchanged with the .NET SDK.

using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;

namespace BitTtt
{
    /// <summary>Marks a static callback for AOT (IL2CPP looks for this attribute by name).</summary>
    [AttributeUsage(AttributeTargets.Method)]
    public sealed class MonoPInvokeCallbackAttribute : Attribute
    {
        public MonoPInvokeCallbackAttribute(Type delegateType) { DelegateType = delegateType; }
        public Type DelegateType { get; private set; }
    }

    /// <summary>The library's status codes (BIT_TTT_*).</summary>
    public enum Status
    {
        Ok = 0, InvalidArgument = 1, NullPointer = 2, BufferTooSmall = 3, InvalidUtf8 = 4, Io = 5,
        InvalidModel = 6, IncompatibleState = 7, OutOfMemory = 8, ContextFull = 9, Cancelled = 10,
        Busy = 11, Unsupported = 12, AbiMismatch = 13, DeviceError = 14, Poisoned = 15,
        Internal = 100, Panic = 101,
    }

    /// <summary>Why generation stopped (BIT_TTT_STOP_*).</summary>
    public enum StopReason { None = 0, StopToken = 1, StopString = 2, MaxTokens = 3, ContextFull = 4, Cancelled = 5, Callback = 6 }

    [Flags]
    public enum ResetParts : uint { Context = 1, Adapters = 2, Rng = 4, All = 7 }

    /// <summary>A failed call: the status and the library's message.</summary>
    public class BitTttException : Exception
    {
        public BitTttException(Status status, string message) : base(status + ": " + message) { Status = status; }
        public Status Status { get; private set; }
    }

    public sealed class ModelOptions
    {
        public uint Threads;          // 0 = one per core
        public string Kernel;         // null = the fastest this CPU runs
        public bool Int8Head;
        public string Head;           // "native", "int8" or "int4"; null = Int8Head decides
        public string Device;         // "auto" (null), "cpu", "cuda" or "cuda:N"
        public int GpuLayers = -1;    // layers on the GPU, -1 = all and the output head
    }

    public sealed class GenerateOptions
    {
        public int MaxTokens = 256;   // 0 = until the context is full
        public float Temperature = 0.8f;
        public int TopK = 40;
        public float TopP = 0.95f;
        public float MinP = 0.05f;
        public float RepeatPenalty = 1.0f;
        public ulong? Seed;
        public string[] Stop;
        public bool IgnoreEos;
    }

    public sealed class AdaptOptions
    {
        public int? Rank, Layers, ChunkTokens, Epochs;
        public float? Alpha, LearningRate, WeightDecay, Clip, DecayToInit;
        public ulong? Seed;
        public bool KeepKv;
        public bool Online;           // read the text into the context, scoring each window before its step
    }

    public struct GenerateResult
    {
        public StopReason StopReason;
        public int PromptTokens, GeneratedTokens;
        public double PrefillMs, DecodeMs;
        public string Text;
    }

    public struct AdaptResult
    {
        public int Steps, Tokens;
        public float FirstLoss, LastLoss;
        public double Ms;
    }

    public struct ModelInfo
    {
        public int Family, HiddenSize, IntermediateSize, Layers, Heads, KvHeads, VocabSize, MaxPositions, Threads;
        public ulong Parameters, TernaryParameters, WeightBytes, Fp16Bytes, Fingerprint;
    }

    internal sealed class ModelHandle : SafeHandle
    {
        public ModelHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle() { Native.bit_ttt_model_free(handle); return true; }
    }

    internal sealed class SessionHandle : SafeHandle
    {
        public SessionHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle() { Native.bit_ttt_session_free(handle); return true; }
    }

    internal sealed class JobHandle : SafeHandle
    {
        public JobHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle() { Native.bit_ttt_job_free(handle); return true; }
    }

    internal static class Native
    {
        const string Lib = "bit_ttt";

        [StructLayout(LayoutKind.Sequential)]
        public struct Str { public IntPtr Ptr; public UIntPtr Len; }

        [StructLayout(LayoutKind.Sequential)]
        public struct ModelParams { public uint StructSize; public uint NThreads; public Str Kernel; public byte Int8Head; public Str Head; public Str Device; public int NGpuLayers; }

        [StructLayout(LayoutKind.Sequential)]
        public struct ModelInfo
        {
            public uint StructSize; public int Family;
            public uint HiddenSize, IntermediateSize, NumLayers, NumHeads, NumKvHeads, VocabSize, MaxPositionEmbeddings, NThreads;
            public ulong NParams, NTernaryParams, WeightBytes, Fp16Bytes, Fingerprint;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct SessionParams { public uint StructSize; public uint NCtx; public uint NBatch; public ulong Seed; public Str KvCache; }

        [StructLayout(LayoutKind.Sequential)]
        public struct GenerateParams
        {
            public uint StructSize; public int MaxTokens; public float Temperature; public int TopK; public float TopP;
            public float MinP; public float RepeatPenalty; public int RepeatLastN; public float PresencePenalty;
            public float FrequencyPenalty; public ulong Seed; public IntPtr StopStrings; public UIntPtr NStopStrings;
            public IntPtr StopTokens; public UIntPtr NStopTokens; public byte IgnoreEos; public IntPtr OnToken; public IntPtr UserData;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct GenerateResultN
        {
            public uint StructSize; public int StopReason; public uint PromptTokens; public uint GeneratedTokens;
            public double PrefillMs; public double DecodeMs;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct AdaptParams
        {
            public uint StructSize; public int Rank; public float Alpha; public int Layers; public uint Projections;
            public float LearningRate, WeightDecay, Beta1, Beta2, Eps, Clip; public int ChunkTokens; public int Epochs;
            public ulong Seed; public float DecayToInit; public byte KeepKv; public IntPtr OnProgress; public IntPtr UserData;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct AdaptResultN { public uint StructSize; public uint Steps; public uint Tokens; public float FirstLoss; public float LastLoss; public double Ms; }

        [StructLayout(LayoutKind.Sequential)]
        public struct ChatMessage { public Str Role; public Str Content; }

        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int TokenCallback(IntPtr userData, int token, IntPtr text, UIntPtr len);

        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int AdaptCallback(IntPtr userData, int step, int total, float loss);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint bit_ttt_abi_version();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern IntPtr bit_ttt_version_string();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern UIntPtr bit_ttt_struct_size(byte[] name);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern IntPtr bit_ttt_last_error();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_system_info(byte[] buf, UIntPtr cap, out UIntPtr len);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_model_params_init(ref ModelParams p);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_model_load(byte[] path, UIntPtr len, ref ModelParams p, out ModelHandle model);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern void bit_ttt_model_free(IntPtr model);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_model_get_info(ModelHandle model, ref ModelInfo info);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_session_params_init(ref SessionParams p);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_session_new(ModelHandle model, ref SessionParams p, out SessionHandle session);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern void bit_ttt_session_free(IntPtr session);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_session_cancel(SessionHandle session);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_session_reset(SessionHandle session, uint parts);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_generate_params_init(ref GenerateParams p);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_generate(SessionHandle session, byte[] prompt, UIntPtr len, ref GenerateParams p, ref GenerateResultN result);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_session_last_text(SessionHandle session, byte[] buf, UIntPtr cap, out UIntPtr len);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_generate_async(SessionHandle session, byte[] prompt, UIntPtr len, ref GenerateParams p, out JobHandle job);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_job_poll(JobHandle job, byte[] buf, UIntPtr cap, out UIntPtr len, out byte done);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_job_wait(JobHandle job, int timeoutMs, out byte done);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_job_result(JobHandle job, ref GenerateResultN result);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_job_cancel(JobHandle job);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern void bit_ttt_job_free(IntPtr job);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_adapt_params_init(ref AdaptParams p);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_adapt(SessionHandle session, byte[] text, UIntPtr len, ref AdaptParams p, ref AdaptResultN result);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_adapt_online(SessionHandle session, byte[] text, UIntPtr len, ref AdaptParams p, ref AdaptResultN result);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_eval_nll(SessionHandle session, byte[] text, UIntPtr len, out double nll, out UIntPtr tokens);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_session_state_save(SessionHandle session, byte[] buf, UIntPtr cap, out UIntPtr len);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_session_state_load(SessionHandle session, byte[] buf, UIntPtr len);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_tokenize(ModelHandle model, byte[] text, UIntPtr len, byte addSpecial, int[] tokens, UIntPtr cap, out UIntPtr n);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_detokenize(ModelHandle model, int[] tokens, UIntPtr n, byte[] buf, UIntPtr cap, out UIntPtr len);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern int bit_ttt_chat_apply_template(ModelHandle model, ChatMessage[] messages, UIntPtr n, byte addGenerationPrompt, byte[] buf, UIntPtr cap, out UIntPtr len);

        public delegate int Fill(byte[] buf, UIntPtr cap, out UIntPtr len);

        /// <summary>Text out with the library's two-call buffer rule, growing while it grows.</summary>
        public static string ReadText(Fill fill)
        {
            UIntPtr len;
            byte[] buf = null;
            int cap = 0;
            while (true)
            {
                int st = fill(buf, (UIntPtr)cap, out len);
                if (st == (int)Status.Ok) return buf == null ? "" : Encoding.UTF8.GetString(buf, 0, (int)len);
                if (st != (int)Status.BufferTooSmall) Check(st);
                cap = (int)len + 1;
                buf = new byte[cap];
            }
        }

        public static void Check(int status)
        {
            if (status == 0) return;
            string message = Utf8At(bit_ttt_last_error());
            throw new BitTttException((Status)status, message);
        }

        public static string Utf8At(IntPtr p)
        {
            if (p == IntPtr.Zero) return "";
            int n = 0;
            while (Marshal.ReadByte(p, n) != 0) n++;
            byte[] b = new byte[n];
            Marshal.Copy(p, b, 0, n);
            return Encoding.UTF8.GetString(b);
        }

        public static byte[] Utf8(string s)
        {
            if (s == null) throw new ArgumentNullException("text");
            return Encoding.UTF8.GetBytes(s);
        }

        static Native()
        {
            if (bit_ttt_abi_version() < 4) throw new BitTttException(Status.AbiMismatch, "library ABI is older than these bindings");
            CheckSize("bit_ttt_model_params", typeof(ModelParams));
            CheckSize("bit_ttt_model_info", typeof(ModelInfo));
            CheckSize("bit_ttt_session_params", typeof(SessionParams));
            CheckSize("bit_ttt_generate_params", typeof(GenerateParams));
            CheckSize("bit_ttt_generate_result", typeof(GenerateResultN));
            CheckSize("bit_ttt_adapt_params", typeof(AdaptParams));
            CheckSize("bit_ttt_adapt_result", typeof(AdaptResultN));
            CheckSize("bit_ttt_string", typeof(Str));
            CheckSize("bit_ttt_chat_message", typeof(ChatMessage));
        }

        static void CheckSize(string name, Type t)
        {
            ulong native = (ulong)bit_ttt_struct_size(Encoding.ASCII.GetBytes(name + "\0"));
            if (native != (ulong)Marshal.SizeOf(t))
                throw new BitTttException(Status.AbiMismatch, name + " is " + native + " bytes in the library, " + Marshal.SizeOf(t) + " here");
        }
    }

    /// <summary>A loaded model: immutable, shared by any number of sessions, usable from any thread.</summary>
    public sealed class Model : IDisposable
    {
        internal readonly ModelHandle Handle;

        Model(ModelHandle h) { Handle = h; }

        public static string Version { get { return Native.Utf8At(Native.bit_ttt_version_string()); } }

        public static string SystemInfo { get { return Native.ReadText(Native.bit_ttt_system_info); } }

        public static Model Load(string path, ModelOptions options = null)
        {
            var p = new Native.ModelParams();
            Native.Check(Native.bit_ttt_model_params_init(ref p));
            GCHandle kernel = default(GCHandle), head = default(GCHandle), device = default(GCHandle);
            try
            {
                if (options != null)
                {
                    p.NThreads = options.Threads;
                    p.Int8Head = (byte)(options.Int8Head ? 1 : 0);
                    if (!string.IsNullOrEmpty(options.Kernel))
                    {
                        byte[] k = Native.Utf8(options.Kernel);
                        kernel = GCHandle.Alloc(k, GCHandleType.Pinned);
                        p.Kernel.Ptr = kernel.AddrOfPinnedObject();
                        p.Kernel.Len = (UIntPtr)k.Length;
                    }
                    if (!string.IsNullOrEmpty(options.Head))
                    {
                        byte[] hb = Native.Utf8(options.Head);
                        head = GCHandle.Alloc(hb, GCHandleType.Pinned);
                        p.Head.Ptr = head.AddrOfPinnedObject();
                        p.Head.Len = (UIntPtr)hb.Length;
                    }
                    if (!string.IsNullOrEmpty(options.Device))
                    {
                        byte[] db = Native.Utf8(options.Device);
                        device = GCHandle.Alloc(db, GCHandleType.Pinned);
                        p.Device.Ptr = device.AddrOfPinnedObject();
                        p.Device.Len = (UIntPtr)db.Length;
                    }
                    p.NGpuLayers = options.GpuLayers;
                }
                byte[] b = Native.Utf8(path);
                ModelHandle h;
                Native.Check(Native.bit_ttt_model_load(b, (UIntPtr)b.Length, ref p, out h));
                return new Model(h);
            }
            finally
            {
                if (kernel.IsAllocated) kernel.Free();
                if (head.IsAllocated) head.Free();
                if (device.IsAllocated) device.Free();
            }
        }

        public ModelInfo Info
        {
            get
            {
                var i = new Native.ModelInfo { StructSize = (uint)Marshal.SizeOf(typeof(Native.ModelInfo)) };
                Native.Check(Native.bit_ttt_model_get_info(Handle, ref i));
                return new ModelInfo
                {
                    Family = i.Family, HiddenSize = (int)i.HiddenSize, IntermediateSize = (int)i.IntermediateSize,
                    Layers = (int)i.NumLayers, Heads = (int)i.NumHeads, KvHeads = (int)i.NumKvHeads, VocabSize = (int)i.VocabSize,
                    MaxPositions = (int)i.MaxPositionEmbeddings, Threads = (int)i.NThreads, Parameters = i.NParams,
                    TernaryParameters = i.NTernaryParams, WeightBytes = i.WeightBytes, Fp16Bytes = i.Fp16Bytes, Fingerprint = i.Fingerprint,
                };
            }
        }

        public int[] Tokenize(string text, bool addSpecial = true)
        {
            byte[] b = Native.Utf8(text);
            UIntPtr n;
            int[] buf = new int[b.Length + 8];
            int st = Native.bit_ttt_tokenize(Handle, b, (UIntPtr)b.Length, (byte)(addSpecial ? 1 : 0), buf, (UIntPtr)buf.Length, out n);
            if (st == (int)Status.BufferTooSmall)
            {
                buf = new int[(int)n];
                st = Native.bit_ttt_tokenize(Handle, b, (UIntPtr)b.Length, (byte)(addSpecial ? 1 : 0), buf, (UIntPtr)buf.Length, out n);
            }
            Native.Check(st);
            Array.Resize(ref buf, (int)n);
            return buf;
        }

        public string Detokenize(int[] tokens)
        {
            return Native.ReadText((byte[] b, UIntPtr c, out UIntPtr l) => Native.bit_ttt_detokenize(Handle, tokens, (UIntPtr)tokens.Length, b, c, out l));
        }

        /// <summary>The model's chat template applied to (role, content) pairs.</summary>
        public string ApplyChatTemplate(IList<KeyValuePair<string, string>> messages, bool addGenerationPrompt = true)
        {
            var pins = new List<GCHandle>();
            try
            {
                var arr = new Native.ChatMessage[messages.Count];
                for (int i = 0; i < messages.Count; i++)
                {
                    arr[i].Role = Pin(messages[i].Key, pins);
                    arr[i].Content = Pin(messages[i].Value, pins);
                }
                return Native.ReadText((byte[] b, UIntPtr c, out UIntPtr l) =>
                    Native.bit_ttt_chat_apply_template(Handle, arr, (UIntPtr)arr.Length, (byte)(addGenerationPrompt ? 1 : 0), b, c, out l));
            }
            finally
            {
                foreach (var p in pins) p.Free();
            }
        }

        static Native.Str Pin(string s, List<GCHandle> pins)
        {
            byte[] b = Native.Utf8(s);
            var h = GCHandle.Alloc(b, GCHandleType.Pinned);
            pins.Add(h);
            return new Native.Str { Ptr = h.AddrOfPinnedObject(), Len = (UIntPtr)b.Length };
        }

        public void Dispose() { Handle.Dispose(); }
    }

    /// <summary>
    /// A generation started with Session.GenerateAsync: poll it from a game loop (Update) without
    /// blocking. Dispose cancels it if it still runs.
    /// </summary>
    public sealed class GenerateJob : IDisposable
    {
        readonly JobHandle handle;
        readonly StringBuilder text = new StringBuilder();
        byte[] buf = new byte[256];

        internal GenerateJob(JobHandle h) { handle = h; }

        /// <summary>The text produced since the last poll; `done` once all of it has been taken.</summary>
        public string Poll(out bool done)
        {
            while (true)
            {
                UIntPtr len;
                byte d;
                int st = Native.bit_ttt_job_poll(handle, buf, (UIntPtr)buf.Length, out len, out d);
                if (st == (int)Status.BufferTooSmall) { buf = new byte[(int)len * 2 + 64]; continue; }
                Native.Check(st);
                done = d != 0;
                string piece = Encoding.UTF8.GetString(buf, 0, (int)len);
                text.Append(piece);
                return piece;
            }
        }

        /// <summary>Blocks up to timeoutMs (negative: no limit); true when the job has finished.</summary>
        public bool Wait(int timeoutMs)
        {
            byte done;
            Native.Check(Native.bit_ttt_job_wait(handle, timeoutMs, out done));
            return done != 0;
        }

        public void Cancel() { Native.Check(Native.bit_ttt_job_cancel(handle)); }

        /// <summary>The outcome once finished: throws BitTttException (Cancelled, ...) on failure.</summary>
        public GenerateResult Result
        {
            get
            {
                var r = new Native.GenerateResultN { StructSize = (uint)Marshal.SizeOf(typeof(Native.GenerateResultN)) };
                Native.Check(Native.bit_ttt_job_result(handle, ref r));
                return Session.Convert(r, text.ToString());
            }
        }

        public void Dispose() { handle.Dispose(); }
    }

    /// <summary>One conversation over a model: context, sampler and adapters. One call at a time.</summary>
    public sealed class Session : IDisposable
    {
        readonly SessionHandle handle;
        readonly Model model;

        /// <param name="kvCache">"f32" (exact, the default when null) or "f16" (half the KV memory,
        /// faster decode in long contexts).</param>
        public Session(Model model, int contextTokens = 0, ulong? seed = null, string kvCache = null)
        {
            this.model = model;
            var p = new Native.SessionParams();
            Native.Check(Native.bit_ttt_session_params_init(ref p));
            if (contextTokens < 0) throw new ArgumentOutOfRangeException("contextTokens");
            p.NCtx = (uint)contextTokens;
            if (seed.HasValue) p.Seed = seed.Value;
            GCHandle kv = default(GCHandle);
            try
            {
                if (!string.IsNullOrEmpty(kvCache))
                {
                    byte[] kb = Native.Utf8(kvCache);
                    kv = GCHandle.Alloc(kb, GCHandleType.Pinned);
                    p.KvCache.Ptr = kv.AddrOfPinnedObject();
                    p.KvCache.Len = (UIntPtr)kb.Length;
                }
                Native.Check(Native.bit_ttt_session_new(model.Handle, ref p, out handle));
            }
            finally
            {
                if (kv.IsAllocated) kv.Free();
            }
        }

        public Model Model { get { return model; } }

        sealed class TokenState
        {
            public Func<string, bool> OnToken;
            public Exception Error;
        }

        [MonoPInvokeCallback(typeof(Native.TokenCallback))]
        static int OnToken(IntPtr userData, int token, IntPtr text, UIntPtr len)
        {
            var state = (TokenState)GCHandle.FromIntPtr(userData).Target;
            try
            {
                byte[] b = new byte[(int)len];
                Marshal.Copy(text, b, 0, b.Length);
                return state.OnToken(Encoding.UTF8.GetString(b)) ? 0 : 1;
            }
            catch (Exception e)
            {
                state.Error = e;
                return 1;
            }
        }

        static readonly Native.TokenCallback TokenThunk = OnToken;

        sealed class AdaptState
        {
            public Func<int, int, float, bool> Progress;
            public Exception Error;
        }

        [MonoPInvokeCallback(typeof(Native.AdaptCallback))]
        static int OnProgress(IntPtr userData, int step, int total, float loss)
        {
            var state = (AdaptState)GCHandle.FromIntPtr(userData).Target;
            try { return state.Progress(step, total, loss) ? 0 : 1; }
            catch (Exception e) { state.Error = e; return 1; }
        }

        static readonly Native.AdaptCallback ProgressThunk = OnProgress;

        /// <summary>Pins what the params point to for the duration of a call.</summary>
        sealed class Pins : IDisposable
        {
            readonly List<GCHandle> handles = new List<GCHandle>();
            public IntPtr Pin(object o) { var h = GCHandle.Alloc(o, GCHandleType.Pinned); handles.Add(h); return h.AddrOfPinnedObject(); }
            public IntPtr Keep(object o) { var h = GCHandle.Alloc(o); handles.Add(h); return GCHandle.ToIntPtr(h); }
            public void Dispose() { foreach (var h in handles) h.Free(); }
        }

        static Native.GenerateParams Params(GenerateOptions o, Pins pins)
        {
            var p = new Native.GenerateParams();
            Native.Check(Native.bit_ttt_generate_params_init(ref p));
            o = o ?? new GenerateOptions();
            p.MaxTokens = o.MaxTokens; p.Temperature = o.Temperature; p.TopK = o.TopK; p.TopP = o.TopP;
            p.MinP = o.MinP; p.RepeatPenalty = o.RepeatPenalty; p.IgnoreEos = (byte)(o.IgnoreEos ? 1 : 0);
            if (o.Seed.HasValue) p.Seed = o.Seed.Value;
            if (o.Stop != null && o.Stop.Length > 0)
            {
                var arr = new Native.Str[o.Stop.Length];
                for (int i = 0; i < arr.Length; i++)
                {
                    byte[] b = Native.Utf8(o.Stop[i]);
                    arr[i] = new Native.Str { Ptr = pins.Pin(b), Len = (UIntPtr)b.Length };
                }
                p.StopStrings = pins.Pin(arr);
                p.NStopStrings = (UIntPtr)arr.Length;
            }
            return p;
        }

        internal static GenerateResult Convert(Native.GenerateResultN r, string text)
        {
            return new GenerateResult
            {
                StopReason = (StopReason)r.StopReason, PromptTokens = (int)r.PromptTokens, GeneratedTokens = (int)r.GeneratedTokens,
                PrefillMs = r.PrefillMs, DecodeMs = r.DecodeMs, Text = text,
            };
        }

        /// <summary>
        /// Generates a continuation of `prompt` (appended to the context, BOS added when it is
        /// empty). onToken sees each piece of text and returns false to stop. The token, if
        /// cancelled, stops it within one token (the call then throws BitTttException Cancelled).
        /// </summary>
        public GenerateResult Generate(string prompt, GenerateOptions options = null, Func<string, bool> onToken = null,
                                       CancellationToken cancel = default(CancellationToken))
        {
            byte[] b = Native.Utf8(prompt);
            using (var pins = new Pins())
            using (cancel.Register(Cancel))
            {
                var p = Params(options, pins);
                var state = new TokenState { OnToken = onToken };
                if (onToken != null)
                {
                    p.OnToken = Marshal.GetFunctionPointerForDelegate(TokenThunk);
                    p.UserData = pins.Keep(state);
                }
                var r = new Native.GenerateResultN { StructSize = (uint)Marshal.SizeOf(typeof(Native.GenerateResultN)) };
                int st = Native.bit_ttt_generate(handle, b, (UIntPtr)b.Length, ref p, ref r);
                if (state.Error != null) throw state.Error;
                Native.Check(st);
                return Convert(r, Native.ReadText((byte[] buf, UIntPtr c, out UIntPtr l) => Native.bit_ttt_session_last_text(handle, buf, c, out l)));
            }
        }

        /// <summary>Starts generating on a library thread; poll the job (e.g. from Update()).</summary>
        public GenerateJob GenerateAsync(string prompt, GenerateOptions options = null)
        {
            byte[] b = Native.Utf8(prompt);
            using (var pins = new Pins())
            {
                var p = Params(options, pins);
                JobHandle job;
                Native.Check(Native.bit_ttt_generate_async(handle, b, (UIntPtr)b.Length, ref p, out job));
                return new GenerateJob(job);
            }
        }

        /// <summary>
        /// Test-time training of the session's adapters on `text` (the model is never modified).
        /// progress(step, totalSteps, loss) runs on this thread after every step; false stops.
        /// </summary>
        public AdaptResult Adapt(string text, AdaptOptions options = null, Func<int, int, float, bool> progress = null,
                                 CancellationToken cancel = default(CancellationToken))
        {
            byte[] b = Native.Utf8(text);
            var o = options ?? new AdaptOptions();
            var p = new Native.AdaptParams();
            Native.Check(Native.bit_ttt_adapt_params_init(ref p));
            if (o.Rank.HasValue) p.Rank = o.Rank.Value;
            if (o.Layers.HasValue) p.Layers = o.Layers.Value;
            if (o.ChunkTokens.HasValue) p.ChunkTokens = o.ChunkTokens.Value;
            if (o.Epochs.HasValue) p.Epochs = o.Epochs.Value;
            if (o.Alpha.HasValue) p.Alpha = o.Alpha.Value;
            if (o.LearningRate.HasValue) p.LearningRate = o.LearningRate.Value;
            if (o.WeightDecay.HasValue) p.WeightDecay = o.WeightDecay.Value;
            if (o.Clip.HasValue) p.Clip = o.Clip.Value;
            if (o.DecayToInit.HasValue) p.DecayToInit = o.DecayToInit.Value;
            if (o.Seed.HasValue) p.Seed = o.Seed.Value;
            p.KeepKv = (byte)(o.KeepKv ? 1 : 0);
            using (var pins = new Pins())
            using (cancel.Register(Cancel))
            {
                var state = new AdaptState { Progress = progress };
                if (progress != null)
                {
                    p.OnProgress = Marshal.GetFunctionPointerForDelegate(ProgressThunk);
                    p.UserData = pins.Keep(state);
                }
                var r = new Native.AdaptResultN { StructSize = (uint)Marshal.SizeOf(typeof(Native.AdaptResultN)) };
                int st = o.Online ? Native.bit_ttt_adapt_online(handle, b, (UIntPtr)b.Length, ref p, ref r)
                                  : Native.bit_ttt_adapt(handle, b, (UIntPtr)b.Length, ref p, ref r);
                if (state.Error != null) throw state.Error;
                Native.Check(st);
                return new AdaptResult { Steps = (int)r.Steps, Tokens = (int)r.Tokens, FirstLoss = r.FirstLoss, LastLoss = r.LastLoss, Ms = r.Ms };
            }
        }

        /// <summary>exp(mean NLL) of `text` with the current adapters.</summary>
        public double Perplexity(string text)
        {
            byte[] b = Native.Utf8(text);
            double nll;
            UIntPtr n;
            Native.Check(Native.bit_ttt_eval_nll(handle, b, (UIntPtr)b.Length, out nll, out n));
            return Math.Exp(nll);
        }

        public byte[] SaveState()
        {
            UIntPtr len;
            int st = Native.bit_ttt_session_state_save(handle, null, UIntPtr.Zero, out len);
            if (st != (int)Status.BufferTooSmall) Native.Check(st);
            byte[] buf = new byte[(int)len];
            Native.Check(Native.bit_ttt_session_state_save(handle, buf, (UIntPtr)buf.Length, out len));
            return buf;
        }

        public void LoadState(byte[] state)
        {
            if (state == null) throw new ArgumentNullException("state");
            Native.Check(Native.bit_ttt_session_state_load(handle, state, (UIntPtr)state.Length));
        }

        public void Reset(ResetParts parts = ResetParts.All) { Native.Check(Native.bit_ttt_session_reset(handle, (uint)parts)); }

        /// <summary>Stops the running call (from any thread) within one token or step.</summary>
        public void Cancel() { Native.bit_ttt_session_cancel(handle); }

        public void Dispose() { handle.Dispose(); }
    }
}
