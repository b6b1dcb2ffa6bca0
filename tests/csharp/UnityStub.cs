// The few UnityEngine types examples/csharp/unity/BitTttChat.cs uses, so CI can compile that sample
// without Unity. Not shipped.
namespace UnityEngine
{
    public class Object { }
    public class Component : Object { }
    public class Behaviour : Component { }
    public class MonoBehaviour : Behaviour { }
    public static class Application { public static string streamingAssetsPath { get { return "."; } } }
    public static class Debug
    {
        public static void Log(object o) { System.Console.WriteLine(o); }
        public static void LogError(object o) { System.Console.Error.WriteLine(o); }
    }
}
