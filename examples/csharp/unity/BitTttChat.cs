// A Unity MonoBehaviour that lets a character answer without blocking the frame: generation runs
// on the library's thread and Update() polls it.
//
// Where the native library goes (Assets/Plugins/...): Windows x86_64: bit_ttt.dll; Linux:
// libbit_ttt.so; macOS: libbit_ttt.dylib (or a .bundle); Android arm64-v8a: libbit_ttt.so built
// for aarch64-linux-android; iOS: the static libbit_ttt.a (then change the DllImport name in
// BitTtt.cs to "__Internal"). Put the model folder under Assets/StreamingAssets/.
// Copy bindings/csharp/BitTtt.cs next to this script.

using BitTtt;
using UnityEngine;

public class BitTttChat : MonoBehaviour
{
    public string modelFolder = "sample";
    public string prompt = "The old lighthouse keeper said";

    Model model;
    Session session;
    GenerateJob job;
    string reply = "";

    void Start()
    {
        model = Model.Load(System.IO.Path.Combine(Application.streamingAssetsPath, modelFolder));
        session = new Session(model, 512);
        // What the character has been told: learned into its adapters, not kept in the prompt.
        session.Adapt("The keeper's name is Amos. He has kept the light for forty years.");
        job = session.GenerateAsync(prompt, new GenerateOptions { MaxTokens = 64 });
    }

    void Update()
    {
        if (job == null) return;
        bool done;
        reply += job.Poll(out done);  // never blocks
        if (done)
        {
            Debug.Log(reply);
            job.Dispose();
            job = null;
        }
    }

    void OnDestroy()
    {
        if (job != null) job.Dispose();  // cancels a running generation
        if (session != null) session.Dispose();
        if (model != null) model.Dispose();
    }
}
