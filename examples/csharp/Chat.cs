// Console chat with Bit-TTT from C#: streams the reply, remembers the conversation, and with
// "/learn TEXT" adapts the model to what you tell it.
//   mcs -out:chat.exe bindings/csharp/BitTtt.cs examples/csharp/Chat.cs
//   LD_LIBRARY_PATH=target/release mono chat.exe models/sample

using System;
using System.Collections.Generic;
using BitTtt;

static class Chat
{
    static int Main(string[] args)
    {
        string dir = args.Length > 0 ? args[0] : "models/sample";
        using (var model = Model.Load(dir))
        using (var session = new Session(model))
        {
            var history = new List<KeyValuePair<string, string>>();
            var options = new GenerateOptions { MaxTokens = 128, Temperature = 0.7f, Stop = new[] { "User:" } };
            Console.Error.WriteLine("Bit-TTT " + Model.Version + ". /learn TEXT adapts the model to TEXT, /quit leaves.");
            string line;
            while ((line = Console.ReadLine()) != null)
            {
                if (line == "/quit") break;
                if (line.StartsWith("/learn "))
                {
                    var r = session.Adapt(line.Substring(7), null, (step, total, loss) => { Console.Error.Write("\rstep " + step + "/" + total + " loss " + loss.ToString("F3")); return true; });
                    Console.Error.WriteLine(" done (" + r.Steps + " steps)");
                    continue;
                }
                history.Add(new KeyValuePair<string, string>("user", line));
                session.Reset(ResetParts.Context);  // the template re-renders the whole conversation
                string prompt = model.ApplyChatTemplate(history);
                var reply = session.Generate(prompt, options, piece => { Console.Write(piece); return true; });
                Console.WriteLine();
                history.Add(new KeyValuePair<string, string>("assistant", reply.Text.Trim()));
            }
        }
        return 0;
    }
}
