// Tests of bindings/csharp/BitTtt.cs against the native library, compiled with Mono's mcs and run
// with mono by tests/csharp/run.sh (also builds with the .NET SDK).
//   mono tests.exe MODEL_DIR OTHER_MODEL_DIR

using System;
using System.Collections.Generic;
using System.Threading;
using BitTtt;

static class Tests
{
    static int checks;

    static void Check(bool ok, string what)
    {
        checks++;
        if (!ok) throw new Exception("check failed: " + what);
    }

    static void Throws(Status status, Action a, string what)
    {
        try { a(); }
        catch (BitTttException e)
        {
            Check(e.Status == status, what + ": got " + e.Status + " (" + e.Message + ")");
            return;
        }
        throw new Exception("no exception: " + what);
    }

    static GenerateOptions Greedy(int n) { return new GenerateOptions { MaxTokens = n, Temperature = 0, IgnoreEos = true }; }

    const string Text = "The committee met on Tuesday to discuss the new budget. Several members said that the plan would raise taxes. ";

    static int Main(string[] args)
    {
        string dir = args[0], other = args[1];
        Check(Model.Version == "0.1.0", "version");
        Check(Model.SystemInfo.Contains("ternary kernel"), "system info");
        using (var m4 = Model.Load(dir, new ModelOptions { Head = "int4" }))
            Check(m4.Info.VocabSize > 0, "int4 head");
        Throws(Status.InvalidArgument, () => Model.Load(dir, new ModelOptions { Head = "int3" }), "unknown head");
        using (var cpu = Model.Load(dir, new ModelOptions { Device = "cpu" }))
            Check(cpu.Info.VocabSize > 0, "device cpu");
        Throws(Status.InvalidArgument, () => Model.Load(dir, new ModelOptions { Device = "tpu" }), "unknown device");
        Throws(Status.InvalidArgument, () => Model.Load(dir, new ModelOptions { GpuLayers = -2 }), "negative GPU layers");

        using (var model = Model.Load(dir))
        {
            using (var half = new Session(model, 128, 1, "f16"))
                Check(half.Generate("It was", Greedy(3)).GeneratedTokens == 3, "f16 KV cache");
            Throws(Status.InvalidArgument, () => new Session(model, 128, 1, "q8_0"), "unknown KV cache type");
            var info = model.Info;
            Check(info.Layers > 0 && info.VocabSize > 0 && info.Parameters > 0, "info");

            // Tokens and chat template.
            int[] ids = model.Tokenize("Hello world");
            Check(ids.Length >= 2 && model.Detokenize(ids) == "Hello world", "tokenize round trip");
            string prompt = model.ApplyChatTemplate(new List<KeyValuePair<string, string>> {
                new KeyValuePair<string, string>("user", "Hello") });
            Check(prompt.Contains("User: Hello") && prompt.EndsWith("Assistant: "), "chat template: " + prompt);

            using (var s = new Session(model, 512, 5))
            {
                // Generate with streaming pieces; the pieces make the text.
                var pieces = new List<string>();
                var r = s.Generate("The old man", Greedy(12), piece => { pieces.Add(piece); return true; });
                Check(r.GeneratedTokens == 12 && r.StopReason == StopReason.MaxTokens, "generate result");
                Check(string.Join("", pieces.ToArray()) == r.Text && r.Text.Length > 0, "streamed text");

                // Same from an empty context: same text.
                s.Reset(ResetParts.Context);
                var again = s.Generate("The old man", Greedy(12));
                Check(again.Text == r.Text, "greedy is deterministic");

                // Stop from the callback.
                s.Reset(ResetParts.Context);
                int seen = 0;
                var stopped = s.Generate("The old man", Greedy(50), piece => ++seen < 3);
                Check(stopped.StopReason == StopReason.Callback && seen == 3, "callback stops");

                // Stop strings.
                s.Reset(ResetParts.Context);
                string cut = r.Text.Substring(r.Text.Length / 2, 3);
                var st = s.Generate("The old man", new GenerateOptions { MaxTokens = 12, Temperature = 0, IgnoreEos = true, Stop = new[] { cut } });
                Check(st.StopReason == StopReason.StopString && !st.Text.Contains(cut), "stop string");

                // Async: poll as a game loop would, then cancel a long one.
                s.Reset(ResetParts.Context);
                using (var job = s.GenerateAsync("The old man", Greedy(12)))
                {
                    var sb = new System.Text.StringBuilder();
                    bool done = false;
                    while (!done) { sb.Append(job.Poll(out done)); if (!done) job.Wait(10); }
                    var jr = job.Result;
                    Check(sb.ToString() == r.Text && jr.Text == r.Text && jr.GeneratedTokens == 12, "async text");
                }
                s.Reset(ResetParts.Context);
                using (var job = s.GenerateAsync("Once upon a time", Greedy(0)))
                {
                    job.Cancel();
                    job.Wait(-1);
                    Throws(Status.Cancelled, () => { var x = job.Result; }, "cancelled job");
                }

                // CancellationToken stops a synchronous generate.
                s.Reset(ResetParts.Context);
                using (var cts = new CancellationTokenSource())
                {
                    int n = 0;
                    Throws(Status.Cancelled, () => s.Generate("Once upon a time", Greedy(0), piece => { if (++n == 2) cts.Cancel(); return true; }, cts.Token), "cancellation token");
                }

                // Adapt: progress per step, perplexity falls, reset restores it exactly.
                s.Reset(ResetParts.All);
                double before = s.Perplexity(Text);
                var steps = new List<int>();
                var ar = s.Adapt(Text + Text + Text, new AdaptOptions { LearningRate = 1e-2f, ChunkTokens = 32, Epochs = 2 },
                                 (step, total, loss) => { steps.Add(step); return true; });
                Check(ar.Steps >= 2 && steps.Count == ar.Steps && steps[0] == 1, "adapt steps");
                double after = s.Perplexity(Text);
                Check(after < before, "adapt lowers perplexity: " + before + " -> " + after);

                // State round trip carries the adapters; a foreign state is refused.
                byte[] state = s.SaveState();
                s.Reset(ResetParts.All);
                Check(s.Perplexity(Text) == before, "reset restores the base model");
                s.LoadState(state);
                Check(s.Perplexity(Text) == after, "state round trip");
                using (var m2 = Model.Load(other))
                using (var s2 = new Session(m2))
                    Throws(Status.IncompatibleState, () => s2.LoadState(state), "foreign state");
                Throws(Status.IncompatibleState, () => s.LoadState(new byte[] { 1, 2, 3 }), "garbage state");

                // Online adapt reads the text into the context.
                s.Reset(ResetParts.All);
                var on = s.Adapt(Text, new AdaptOptions { Online = true, ChunkTokens = 8 });
                Check(on.Steps >= 2, "online adapt");
                var cont = s.Generate("", Greedy(4));
                Check(cont.GeneratedTokens == 4, "generation continues after an online read");

                // Errors name what is wrong.
                Throws(Status.InvalidArgument, () => s.Adapt(Text, new AdaptOptions { Rank = 0 }), "rank 0");
                Throws(Status.InvalidArgument, () => s.Generate("x", new GenerateOptions { Temperature = -1 }), "negative temperature");
                s.Reset(ResetParts.All);
                var longText = new System.Text.StringBuilder();
                for (int i = 0; i < 3000; i++) longText.Append(" word");
                Throws(Status.ContextFull, () => s.Generate(longText.ToString(), Greedy(1)), "context full");
            }
        }
        Throws(Status.Io, () => Model.Load("/nonexistent/model"), "missing model");
        Console.WriteLine("csharp tests: " + checks + " checks passed");
        return 0;
    }
}
