// Triage from C# with HttpClient: model "triage", and the model that answered in "model".
//
//     mcs -r:System.Net.Http.dll -r:System.Runtime.Serialization.dll Quickstart.cs -out:quickstart.exe
//     mono quickstart.exe http://127.0.0.1:8080/v1          (or: dotnet run, with the same source)
//
// Written for C# 7 (Mono's mcs): no async Main, no records.
using System;
using System.IO;
using System.Net.Http;
using System.Runtime.Serialization;
using System.Runtime.Serialization.Json;
using System.Text;

[DataContract]
class Message
{
    [DataMember(Name = "content")] public string Content;
}

[DataContract]
class Choice
{
    [DataMember(Name = "message")] public Message Message;
    [DataMember(Name = "delta")] public Message Delta;
}

[DataContract]
class Completion
{
    [DataMember(Name = "model")] public string Model;
    [DataMember(Name = "choices")] public Choice[] Choices;
}

static class Quickstart
{
    static readonly string[] Prompts =
    {
        "What is the capital of France?",
        "Let a, b, c be positive reals with abc = 1. Prove that 1/(a^3(b+c)) + 1/(b^3(c+a)) + " +
        "1/(c^3(a+b)) >= 3/2. Give a complete, rigorous proof, justifying every step and stating " +
        "which inequalities (AM-GM, Cauchy-Schwarz, Muirhead) you use and why their conditions hold.",
        "Write a Python function that implements a retry mechanism with exponential backoff, with " +
        "type hints and async support",
    };

    static readonly HttpClient Http = new HttpClient();

    static string Json(string s)
    {
        var b = new StringBuilder("\"");
        foreach (var c in s)
        {
            if (c == '"' || c == '\\') b.Append('\\').Append(c);
            else if (c < ' ') b.AppendFormat("\\u{0:x4}", (int)c);
            else b.Append(c);
        }
        return b.Append('"').ToString();
    }

    static string Body(string prompt, string extra)
    {
        return "{\"model\":\"triage\",\"messages\":[{\"role\":\"user\",\"content\":" + Json(prompt) + "}]" + extra + "}";
    }

    static Completion Parse(string json)
    {
        var serializer = new DataContractJsonSerializer(typeof(Completion));
        using (var stream = new MemoryStream(Encoding.UTF8.GetBytes(json)))
            return (Completion)serializer.ReadObject(stream);
    }

    static HttpRequestMessage Request(string url, string body)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, url + "/chat/completions");
        request.Headers.Add("Authorization", "Bearer " + (Environment.GetEnvironmentVariable("TRIAGE_API_KEY") ?? "unused"));
        request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        return request;
    }

    static Completion Ask(string url, string body)
    {
        var response = Http.SendAsync(Request(url, body)).GetAwaiter().GetResult();
        var text = response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
        if (!response.IsSuccessStatusCode) throw new Exception((int)response.StatusCode + ": " + text);
        return Parse(text);
    }

    static string FirstLine(string text)
    {
        var line = (text ?? "").Trim().Split('\n')[0];
        return line.Length > 70 ? line.Substring(0, 70) : line;
    }

    static int Main(string[] args)
    {
        var url = args.Length > 0 ? args[0] : "http://127.0.0.1:8080/v1";
        foreach (var prompt in Prompts)
        {
            var r = Ask(url, Body(prompt, ""));
            Console.WriteLine(r.Model.PadRight(32) + " " + FirstLine(r.Choices[0].Message.Content));
        }

        // Routing preferences ride in the body as "triage": a mode, the models allowed, a budget.
        var cheap = Ask(url, Body(Prompts[1],
            ",\"triage\":{\"mode\":\"cost\",\"allowed_models\":[\"gpt-4o-mini-2024-07-18\"," +
            "\"claude-3-haiku-20240307\"],\"max_cost_usd\":0.01}"));
        Console.WriteLine("preferences: " + cheap.Model);

        // Streaming: server-sent events, each chunk naming the model that answers.
        var response = Http.SendAsync(Request(url, Body(Prompts[0], ",\"stream\":true")),
            HttpCompletionOption.ResponseHeadersRead).GetAwaiter().GetResult();
        var reader = new StreamReader(response.Content.ReadAsStreamAsync().GetAwaiter().GetResult());
        string line, model = null;
        var answer = new StringBuilder();
        while ((line = reader.ReadLine()) != null)
        {
            if (!line.StartsWith("data: ") || line == "data: [DONE]") continue;
            var chunk = Parse(line.Substring(6));
            model = chunk.Model;
            if (chunk.Choices != null && chunk.Choices.Length > 0 && chunk.Choices[0].Delta != null)
                answer.Append(chunk.Choices[0].Delta.Content);
        }
        Console.WriteLine("streamed:    " + model + " " + FirstLine(answer.ToString()));
        return 0;
    }
}
