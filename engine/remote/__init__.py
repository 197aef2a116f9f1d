"""`python -m engine serve --listen HOST:PORT`: the protocol of docs/protocol.md over a network connection.

Transport: plain TCP (TLS with --cert/--key) carrying length-prefixed frames, served with stdlib asyncio
streams. Why not WebSocket: the add-on runs inside Blender's Python, where every extra wheel is a
packaging and security burden; a frame of two lengths plus JSON plus binary blobs needs only `socket`,
`ssl`, `struct` and `zlib` on the client, carries mesh arrays without base64's 33 %, and has no HTTP
upgrade, masking or fragmentation rules to get wrong. Nothing here is an HTTP server.

Layout: `frames` (the wire format, stdlib only), `auth` (the token), `fairqueue` (round-robin across
clients), `jobs` (per-client job folders: data in, arrays out), `server` (connections, heartbeats, the
worker thread that runs the existing handlers of engine.service.jobs one job at a time).
"""
