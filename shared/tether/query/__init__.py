"""What operators and the API read: runs, timelines, escalations with context, dead letters, queues."""
