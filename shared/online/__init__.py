"""The online path: a request's rows validated, predicted and shaped into a response."""
