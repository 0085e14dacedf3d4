"""Explanation: the diagnosis (a fit of the Convention model), the hypotheses it searches, convention inference, the analysis tables, porting advice and state conversion, and `explain`."""
