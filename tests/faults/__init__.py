"""Fault injection: processes, agent crashes, full disks, broker outages, clock jumps,
hostile input."""
