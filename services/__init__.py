"""Tether services: planner, executor and escalation, one Celery worker each."""
