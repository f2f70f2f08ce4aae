"""The app's routers, one per concern: OpenAI-compatible (`openai`), experts (`experts`),
health and metrics (`ops`)."""
