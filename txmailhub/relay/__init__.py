"""Outbound relay: queue, retry schedule, MX resolution, delivery, bounces."""
