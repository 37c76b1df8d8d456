"""Compare family: the target against the user's own artifacts (`diagnose compare REFERENCE CANDIDATE`).

The candidate is an ONNX file, a TorchScript archive, a `.pt2` program, another target spec (the same
factory with another checkpoint) or recorded inputs and outputs; the machinery is in
`torch_diagnose.crosscheck`. The check runs only when a candidate is given.
"""
