"""The `conveyor` console script, on top of everything: one module per group of sub-commands.

Each module turns parsed arguments into calls on a capability (pipeline/, schema/, registry/,
serving/, kubeflow/) and its results into lines and exit codes. It may import any room; no room
imports it. A new sub-command gets a module here with a `register(subparsers)` function, listed in
`cli.main.COMMANDS`.
"""
