"""The gateway's own gRPC services (gemini.gateway.v1): thin layers over the store."""
