"""Agents and what they are made of: the Agent, its tools, and asking a human."""
