"""HTTP plumbing shared by every domain: endpoint declarations, request parsing, responses,
the error envelope, middleware and the server around the app."""
