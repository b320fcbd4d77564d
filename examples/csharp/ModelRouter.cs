// The seed's C# walkthrough over plain HTTP, pointed at Triage: only the endpoint and the key
// change. POST to Azure's deployment path with an `api-key` header; `model-router` is an alias
// of `triage`, and "model" in the answer names the model that answered.
//
//     mcs -r:System.Net.Http.dll -r:System.Runtime.Serialization.dll ModelRouter.cs -out:model_router.exe
//     mono model_router.exe http://127.0.0.1:8080
//
// Written for C# 7 (Mono's mcs).
using System;
using System.IO;
using System.Net.Http;
using System.Runtime.Serialization;
using System.Runtime.Serialization.Json;
using System.Text;

[DataContract]
class RouterMessage
{
    [DataMember(Name = "content")] public string Content;
}

[DataContract]
class RouterChoice
{
    [DataMember(Name = "message")] public RouterMessage Message;
}

[DataContract]
class RouterCompletion
{
    [DataMember(Name = "model")] public string Model;
    [DataMember(Name = "choices")] public RouterChoice[] Choices;
}

static class ModelRouter
{
    static void Main(string[] args)
    {
        var endpoint = args.Length > 0 ? args[0] : "http://127.0.0.1:8080";
        var apiKey = Environment.GetEnvironmentVariable("TRIAGE_KEY") ?? "unused";
        var deployment = "model-router";
        var url = endpoint + "/openai/deployments/" + deployment + "/chat/completions?api-version=2024-10-21";
        var body = "{\"messages\": [" +
                   "{\"role\": \"system\", \"content\": \"You are a helpful assistant.\"}, " +
                   "{\"role\": \"user\", \"content\": \"I am going to Paris, what should I see?\"}], " +
                   "\"max_tokens\": 4096, \"temperature\": 0.7, \"top_p\": 0.95}";
        using (var http = new HttpClient())
        {
            var request = new HttpRequestMessage(HttpMethod.Post, url);
            request.Headers.Add("api-key", apiKey);
            request.Content = new StringContent(body, Encoding.UTF8, "application/json");
            var response = http.SendAsync(request).Result;
            var text = response.Content.ReadAsStringAsync().Result;
            if (!response.IsSuccessStatusCode)
            {
                Console.Error.WriteLine((int)response.StatusCode + ": " + text);
                Environment.Exit(1);
            }
            var serializer = new DataContractJsonSerializer(typeof(RouterCompletion));
            var completion = (RouterCompletion)serializer.ReadObject(
                new MemoryStream(Encoding.UTF8.GetBytes(text)));
            Console.WriteLine(deployment + " answered with " + completion.Model + ": " +
                              completion.Choices[0].Message.Content);
        }
    }
}
