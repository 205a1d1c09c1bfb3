"""The one way a FaceSmith node reports bad input: ``"<node>: input '<name>' <problem>"``."""


def input_error(node: str, input_name: str, problem: object) -> ValueError:
    """The error a node raises for a bad input, naming the node and the input."""
    return ValueError(f"{node}: input '{input_name}' {problem}")
