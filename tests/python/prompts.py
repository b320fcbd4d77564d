"""Prompts every client test uses: one easy, one hard (they route to different models)."""

FRANCE = "What is the capital of France?"
PROOF = (
    "Let $a, b, c$ be positive reals with $abc = 1$. Prove that "
    "$\\frac{1}{a^3(b+c)} + \\frac{1}{b^3(c+a)} + \\frac{1}{c^3(a+b)} \\ge \\frac{3}{2}$. "
    "Give a complete, rigorous proof, justifying every step and stating which inequalities "
    "(AM-GM, Cauchy-Schwarz, Muirhead) you use and why their conditions hold."
)
