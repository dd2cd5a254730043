"""OpenAI's Responses API on chat completions: routes, translation, events, the store."""
