"""The HTTP edge: the server and its bounds, request bodies, errors, tokens, the routes and
the API document. It turns requests into calls on the serving pipeline and the model host."""
