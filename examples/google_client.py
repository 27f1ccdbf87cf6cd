import os

import grpc
from google.ai import generativelanguage_v1beta as glm
from google.ai.generativelanguage_v1beta.services.generative_service.transports import (
    GenerativeServiceGrpcTransport,
)

channel = grpc.insecure_channel(os.environ.get("GEMINI_GATEWAY_TARGET", "127.0.0.1:50051"))
client = glm.GenerativeServiceClient(transport=GenerativeServiceGrpcTransport(channel=channel))
response = client.generate_content(
    model="models/gemini-2.5-flash", contents=[{"parts": [{"text": "Hi"}]}]
)
print(response.candidates[0].content.parts[0].text)
