"""`herd collect`: ask a pool the questions of a task, grade the answers, record outcomes."""
