"""Pulumi program: one ModelRelease per AWS stack (stacks/Pulumi.<stack>.yaml); see components/."""

from components.program import main

release = main()
