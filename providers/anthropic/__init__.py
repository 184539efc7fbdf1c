"""``type: anthropic``: Anthropic's Messages API behind the gateway's chat completions (docs/providers.md)."""

from providers.anthropic.provider import AnthropicProvider, MessageStream

__all__ = ["AnthropicProvider", "MessageStream"]
