"""Text → speakable text: a table of cases (what espeak-ng cannot read becomes words)."""

import pytest

from cord.data.normalize import normalize_for_speech, speakable

CASES = [
    # fractions
    (r"What is $\frac{3}{4}$ of 20?", "What is 3 quarters of 20?"),
    (r"Simplify $\frac{1}{2} + \frac{1}{3}$.", "Simplify one half plus one third."),
    (r"Compute $\dfrac{x+1}{12}$.", "Compute x plus 1 over 12."),
    ("He drives for 3/4 of an hour.", "He drives for 3 quarters of an hour."),
    ("Compute 1/3 + 1/6.", "Compute one third plus one sixth."),
    (r"What's $4\frac{1}{2}$ plus $2\frac{1}{4}$?", "What's 4 and one half plus 2 and one quarter?"),
    (r"What is $0.\overline{3}$ as a fraction?", "What is 0 point 3 repeating as a fraction?"),
    # powers and roots
    (r"If $x^2 = 16$, find $x$.", "If x squared equals 16, find x."),
    (r"Find $x^3$ when $x=2$.", "Find x cubed when x equals 2."),
    (r"Evaluate $2^{n}$ for $n = 5$.", "Evaluate 2 to the power n for n equals 5."),
    ("x^2 + 2x = 0", "x squared plus 2x equals 0"),  # espeak reads "2x" as "two x"
    (r"What is $\sqrt{2} \times \sqrt{8}$?", "What is the square root of 2 times the square root of 8?"),
    (r"Find $\sqrt[3]{27}$.", "Find the cube root of 27."),
    # operators and relations
    (r"Compute $6 \cdot 7 \div 3$.", "Compute 6 times 7 divided by 3."),
    (r"Is $x + y \le 10$?", "Is x plus y is less than or equal to 10?"),
    (r"Show that $p \ge q$ and $p < 9$.", "Show that p is greater than or equal to q and p is less than 9."),
    (r"Solve \(3x - 5 = 10\).", "Solve 3 x minus 5 equals 10."),
    ("What is 5 - 3?", "What is 5 minus 3?"),
    ("What is 12.25 * 4?", "What is 12 point 2 5 times 4?"),
    (r"If $x \neq 0$ and $y \approx 3.14$", "If x is not equal to 0 and y is approximately 3 point 1 4"),
    (r"Let $a$ and $b$ be integers.", "Let eigh and b be integers."),
    (r"Let $f(x) = 2x + 1$. What is $f(3)$?", "Let f of x equals 2 x plus 1. What is f of 3?"),
    (r"$$x^2+y^2=z^2$$ holds.", "x squared plus y squared equals z squared holds."),
    (r"Angle ABC is $90^\circ$.", "Angle ABC is 90 degrees."),
    (r"What is $\binom{5}{2}$?", "What is 5 choose 2?"),
    (r"Solve $|x - 3| = 5$.", "Solve the absolute value of x minus 3 equals 5."),
    (r"If $\log_2 x = 5$, find $x$.", "If log base 2 x equals 5, find x."),
    (r"In $\triangle PQR$, $\angle P = 90^\circ$.", "In triangle P Q R, angle P equals 90 degrees."),
    (r"What is $7!$?", "What is 7 factorial?"),
    # percent and money
    (r"What is 20\% of 50?", "What is 20 percent of 50?"),
    ("What is 20% of 50?", "What is 20 percent of 50?"),
    ("A pen costs $5 and a book $12.", "A pen costs 5 dollars and a book 12 dollars."),
    ("She paid $1.50 for gum.", "She paid 1 dollar and 50 cents for gum."),
    (r"A bag holds \$2.50 worth of coins.", "A bag holds 2 dollars and 50 cents worth of coins."),
    ("Earn $20 million per year.", "Earn 20 million dollars per year."),
    ("He earns $20/hour; apples cost $2/kg.", "He earns 20 dollars per hour; apples cost 2 dollars per kilogram."),
    ("Pick red/blue.", "Pick red or blue."),
    # numbers
    ("The town has 1,234,567 people.", "The town has 1234567 people."),
    ("It weighs 3.5 kg.", "It weighs 3 point 5 kilograms."),
    ("What is 0.125 as a fraction?", "What is 0 point 1 2 5 as a fraction?"),
    ("The temperature was -4 degrees.", "The temperature was negative 4 degrees."),
    (r"What is $-4 + 7$?", "What is negative 4 plus 7?"),
    ("He ran 5-10 miles per day.", "He ran 5 to 10 miles per day."),
    ("A 3-digit number.", "A 3 digit number."),
    ("He drives at 60 km/h.", "He drives at 60 kilometers per hour."),
    ("In the 1990s prices rose.", "In the 1990s prices rose."),
    # markdown
    ("**Bold** question: how many?", "Bold question: how many?"),
    ("# Problem\n- item one\n- item two", "Problem. item one. item two"),
    ("What is _markdown_ here?", "What is markdown here?"),  # emphasis, not a subscript
    ("Read *this* word, then __that__ one.", "Read this word, then that one."),
    ("Compute 2*3*4 and 2 * 3.", "Compute 2 times 3 times 4 and 2 times 3."),  # still times
    (r"Let $a_b + c_d = x_1$.", "Let eigh sub b plus c sub d equals x sub 1."),  # still subscripts
    # plain word problems pass through unchanged
    ("Janet's ducks lay 16 eggs per day. How many are left?", "Janet's ducks lay 16 eggs per day. How many are left?"),
]


@pytest.mark.parametrize("text,spoken", CASES)
def test_speakable_table(text, spoken):
    assert speakable(text) == spoken


UNSPEAKABLE = [
    ("", "empty"),
    ("   \n ", "empty"),
    (None, "empty"),
    (r"Find $\begin{pmatrix} 1 \\ 2 \end{pmatrix}$.", "latex_environment"),
    (r"Compute $\sum_{k=1}^n k$.", "unknown_command"),
    ("| a | b |\n|---|---|\n| 1 | 2 |", "table"),
    ("[asy] draw((0,0)--(1,1)); [/asy] Find the area.", "asymptote"),
    ("这是一个数学问题", "non_latin_script"),
    ("¿Cuántas manzanas tiene Juan?", "not_english"),
    ("Combien de pommes a Marie si elle en achète 3?", "not_english"),
    ("Wie viele Äpfel hat Anna, wenn sie 3 kauft und 2 isst?", "not_english"),
    ("Quanti anni ha Marco se è nato nel 1990?", "not_english"),
    ("Let " + " and ".join(f"$x_{{{i}}}^{{{i}}} + y_{{{i}}} = {i}$" for i in range(1, 8)) + ".", "too_much_math"),
    (r"Evaluate $\int_0^1 x\,dx$.", "unknown_command"),
]


@pytest.mark.parametrize("text,reason", UNSPEAKABLE)
def test_unspeakable_returns_none_with_reason(text, reason):
    assert speakable(text) is None
    assert normalize_for_speech(text) == (None, reason)


def test_output_has_no_markup_left():
    for text, _ in CASES:
        out = speakable(text)
        assert not any(ch in out for ch in "\\{}^_$|"), (text, out)


ENGLISH_WITH_FOREIGN_LOOKING_WORDS = [
    "A die is rolled twice. What is the chance of a 6?",
    "El Paso has 3 parks and Le Mans has 2. How many parks in total?",
    "Jose and Maria share 12 apples. If Maria gets 5, how many does Jose get?",
    "Pour 3 liters into a tank that holds 10. How much more fits?",
    "He wears a hat on 4 days of the week. On how many days is he without it?",
]


@pytest.mark.parametrize("text", ENGLISH_WITH_FOREIGN_LOOKING_WORDS)
def test_english_is_not_taken_for_another_language(text):
    assert normalize_for_speech(text)[1] == ""
