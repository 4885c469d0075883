"""The executor service's logic: one message is one tool action."""
