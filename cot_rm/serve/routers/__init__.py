"""The routes of `cot-rm serve`, one router per family: the page and health, the OpenAI-compatible proxy, the judge."""
