"""The worker: an HTTP service that speaks Cloudflare's sandbox container API for many sandboxes.

One concern per module: `app` (assembly, errors), `routes` (the API), `models` (request
bodies), `sandboxes` (which sandbox and session a request means), `sse` (event streams),
`auth` (token), `body_limit` (413), `access_log`, `metrics`, `notify` (systemd) and
`server` (listening, start-up clean-up, graceful stop).
"""
