"""Instructor-only tools: grading submissions (`labs grade`) and building the student edition
(`labs release`). The student edition leaves this whole folder out."""
