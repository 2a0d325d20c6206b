"""Made-up people for synthetic source files: names from English, Spanish and Vietnamese
naming traditions (accents included, so that search and mapping meet real text), birth dates
and phone numbers that belong to no one (555-01xx is reserved for fiction)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

ENGLISH = (
    ("Emily", "Sarah", "Jessica", "Ashley", "Megan", "Rachel", "Laura", "Hannah", "Grace", "Chloe",
     "James", "Michael", "Daniel", "Ryan"),
    ("Smith", "Johnson", "Williams", "Brown", "Miller", "Davis", "Wilson", "Taylor", "Clark",
     "Walker", "Young", "Allen"),
)  # fmt: skip
SPANISH = (
    ("María", "Lucía", "Sofía", "Valentina", "Camila", "Ximena", "Guadalupe", "Inés", "Ángela",
     "Rocío", "José", "Andrés", "Julián"),
    ("García", "Rodríguez", "Hernández", "López", "Martínez", "González", "Pérez", "Sánchez",
     "Ramírez", "Núñez", "Muñoz", "Ibáñez"),
)  # fmt: skip
VIETNAMESE = (
    ("Linh", "Mai", "Thảo", "Hương", "Ngọc", "Trang", "Hạnh", "Phương", "Anh", "Minh", "Tuấn",
     "Dũng"),
    ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ"),
)  # fmt: skip
TRADITIONS = {"en": ENGLISH, "es": SPANISH, "vi": VIETNAMESE}


@dataclass(frozen=True, slots=True)
class Person:
    given: str
    family: str
    sex: str  # "F" | "M" | "U"
    birth_date: date
    language: str  # "en" | "es" | "vi"
    phone: str  # 555-01xx: reserved for fiction


def person(rng: random.Random, *, today: date = date(2026, 12, 1)) -> Person:
    """One made-up adult (18 to 70 years old), most of them women, as in the shelters served."""
    language = rng.choice(("en", "en", "es", "es", "vi"))
    givens, families = TRADITIONS[language]
    sex = rng.choices(("F", "M", "U"), weights=(80, 17, 3))[0]
    birth = today - timedelta(days=rng.randint(18 * 365, 70 * 365))
    phone = f"+1-202-555-01{rng.randint(0, 99):02d}"
    return Person(rng.choice(givens), rng.choice(families), sex, birth, language, phone)
