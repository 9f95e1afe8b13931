"""Security tests attack the API as production serves it: the same runner (timeouts, error
envelope for parser errors, banner) over real sockets, with settings chosen per test
(`api_with`)."""
