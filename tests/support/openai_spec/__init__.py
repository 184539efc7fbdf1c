"""OpenAPI-spec validation helpers for the Switchyard test suite."""
