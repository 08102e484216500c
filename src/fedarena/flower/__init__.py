"""fedarena on Flower (flwr==1.42.0): the only package that imports `flwr`.

- :mod:`.processes`: a local SuperLink and SuperNodes on 127.0.0.1, `flwr run`, clean shutdown.
- :mod:`.tls`: throwaway CA and server certificate for `--tls`.
- :mod:`.records`: the payload codec (fedarena's safetensors bytes inside Flower records) and the
  validation of every reply.
- :mod:`.server_app` / :mod:`.client_app`: one generic ServerApp and one generic ClientApp that drive
  any registered algorithm through ``run_algorithm(runtime=...)``; personal state stays on the node.
- :mod:`.deploy`: `fedarena deploy` as a library call.

Import submodules explicitly; importing this package imports nothing from Flower.
"""
