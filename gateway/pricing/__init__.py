"""Prices: what each answer cost in US dollars, from genai-prices' table, a model's own ``price:``, or zero for local models."""

from gateway.pricing.book import Cost, PriceBook

__all__ = ["Cost", "PriceBook"]
