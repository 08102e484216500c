"""The right to be forgotten, measured: what training keeps (`store`), how a client is removed (`retrain`,
`federaser`), and how completely (`probe`: membership inference and a backdoor); `run` is `fedarena forget`."""
