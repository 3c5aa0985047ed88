"""The OpenAPI document of the HTTP API: the shapes of bodies and answers that have no
pydantic model elsewhere, the table of operations, and the document built from both."""
