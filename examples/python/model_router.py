"""The seed's Azure AI Inference walkthrough, pointed at Triage: only the endpoint and the key
change. `model-router` is an alias of `triage`; the answer names the model that answered.

    pip install azure-ai-inference
    TRIAGE_ENDPOINT=http://127.0.0.1:8080 python examples/python/model_router.py
"""
import os

from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import SystemMessage, UserMessage
from azure.core.credentials import AzureKeyCredential

endpoint = os.environ.get("TRIAGE_ENDPOINT", "http://127.0.0.1:8080") + "/models"
model_name = "model-router"

client = ChatCompletionsClient(
    endpoint=endpoint,
    credential=AzureKeyCredential(os.environ.get("TRIAGE_KEY", "unused")),
)

response = client.complete(
    messages=[
        SystemMessage(content="You are a helpful assistant."),
        UserMessage(content="I am going to Paris, what should I see?"),
    ],
    max_tokens=2048,
    temperature=0.8,
    top_p=0.1,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    model=model_name,
)

print(f"{model_name} answered with {response.model}: {response.choices[0].message.content}")
