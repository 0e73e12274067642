"""Numbers written out in the request's language before the model reads them: a table per
language, what ``language: Auto`` leaves alone, and ``normalize`` on a live server."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import GREEDY_PCM

from qwen_tts_api.text.normalize import normalize
from qwen_tts_api.text.prepare import prepare, read_markup

TABLES = {
    "English": [
        ("I have 3 cats.", "I have three cats."),
        ("It costs $12.50 today.", "It costs twelve dollars, fifty cents today."),
        ("Prices rose 25%.", "Prices rose twenty-five percent."),
        ("The 2nd of 21 runs.", "The second of twenty-one runs."),
        ("Born 2024-03-15.", "Born March fifteenth, twenty twenty-four."),
        ("Meet at 09:05.", "Meet at nine oh five."),
        ("Pi is 3.14.", "Pi is three point one four."),
        ("1,234 people", "one thousand, two hundred and thirty-four people"),
        ("It is 5 km away, -3 °C.", "It is five kilometers away, minus three degrees Celsius."),
        ("Call +1 555-123-4567.", "Call plus one, five five five, one two three, four five six seven."),
    ],
    "French": [
        ("J'ai 3 chats.", "J'ai trois chats."),
        ("Il coûte 12,50 €.", "Il coûte douze euros et cinquante centimes."),
        ("La 2e fois, 25 %.", "La deuxième fois, vingt-cinq pour cent."),
        ("Le 2024-03-15 à 14:30.", "Le quinze mars deux mille vingt-quatre à quatorze heures trente."),
        ("1 234 habitants", "mille deux cent trente-quatre habitants"),
    ],
    "German": [
        ("Ich habe 3 Katzen.", "Ich habe drei Katzen."),
        ("Es kostet 12,50 €.", "Es kostet zwölf Euro und fünfzig Cent."),
        ("Am 2024-03-15 um 14:30.", "Am fünfzehnten März zweitausendvierundzwanzig um vierzehn Uhr dreißig."),
        ("1.234 Leute, 5 km", "eintausendzweihundertvierunddreißig Leute, fünf Kilometer"),
    ],
    "Spanish": [
        ("Tengo 3 gatos y 2 perros.", "Tengo tres gatos y dos perros."),
        ("Cuesta 12,50 €.", "Cuesta doce euros con cincuenta céntimos."),
        ("El 2º, 25 %.", "El segundo, veinticinco por ciento."),
    ],
    "Italian": [
        ("Ho 3 gatti.", "Ho tre gatti."),
        ("Il 2024-03-15.", "Il quindici marzo duemilaventiquattro."),
    ],
    "Portuguese": [
        ("Tenho 3 gatos.", "Tenho três gatos."),
        ("Custa 12,50 €.", "Custa doze euros e cinquenta cêntimos."),
    ],
    "Russian": [
        ("У меня 3 кошки.", "У меня три кошки."),
        ("Скидка 25 %.", "Скидка двадцать пять процентов."),
        ("2024-03-15", "пятнадцать марта две тысячи двадцать четыре года"),
    ],
    "Chinese": [
        ("我有3只猫。", "我有三只猫。"),
        ("打折25%。", "打折百分之二十五。"),
        ("2024-03-15", "二零二四年三月十五日"),
        ("14:30见", "十四点三十分见"),
        ("价格12.5元", "价格十二点五元"),
    ],
    "Japanese": [
        ("猫が3匹います。", "猫が三匹います。"),
        ("¥1200です。", "千二百円です。"),
        ("2024-03-15", "二千二十四年三月十五日"),
    ],
    "Korean": [
        ("고양이 3마리", "고양이 삼마리"),
        ("2024-03-15", "이천이십사년 삼월 십오일"),
        ("25% 할인", "이십오 퍼센트 할인"),
    ],
}


@pytest.mark.parametrize(
    ("language", "text", "spoken"), [(lang, t, s) for lang, rows in TABLES.items() for t, s in rows]
)
def test_numbers_are_written_out_in_the_language(language, text, spoken):
    assert normalize(text, language) == spoken


def test_auto_reads_by_script_and_leaves_latin_text_alone():
    assert normalize("Le 15 mars, 3 chats.", "Auto") == "Le 15 mars, 3 chats."  # French? English? Left.
    assert normalize("我有3只猫", "Auto") == "我有三只猫"
    assert normalize("猫が3匹", "Auto") == "猫が三匹"
    assert normalize("고양이 3마리", "Auto") == "고양이 삼마리"
    assert normalize("У меня 3 кошки", "Auto") == "У меня три кошки"


def test_text_without_digits_and_ids_stay_sensible():
    assert normalize("No numbers here.", "English") == "No numbers here."
    assert normalize("Order 12345678901234567890.", "English").startswith("Order one two three")


def test_each_ssml_span_is_read_in_its_own_language():
    markup = read_markup('<speak>I have 3 cats. <lang xml:lang="fr">J\'ai 3 chats.</lang></speak>')
    prepared = prepare(markup, [], 100, "English", normalized=True)
    assert prepared is not None
    assert [s.text for s in prepared.segments] == ["I have three cats.", "J'ai trois chats."]


def test_say_as_expands_even_without_normalising():
    markup = read_markup(
        '<speak><say-as interpret-as="ordinal">3</say-as> <say-as interpret-as="digits">42</say-as> '
        '<say-as interpret-as="date" format="dmy">15/03/2024</say-as> '
        '<say-as interpret-as="telephone">555-1234</say-as> <say-as interpret-as="time">7:30</say-as> '
        '<say-as interpret-as="cardinal">1,234</say-as></speak>'
    )
    prepared = prepare(markup, [], 100, "English", normalized=False)
    assert prepared is not None and prepared.text == (
        "third four two March fifteenth, twenty twenty-four five five five, one two three four "
        "seven thirty one thousand, two hundred and thirty-four"
    )


@pytest.mark.parametrize(
    ("language", "ssml", "spoken"),
    [
        ("French", '<say-as interpret-as="ordinal">2</say-as>', "deuxième"),
        (
            "French",
            '<say-as interpret-as="date" format="ymd">2024-03-15</say-as>',
            "quinze mars deux mille vingt-quatre",
        ),
        ("German", '<say-as interpret-as="cardinal">21</say-as>', "einundzwanzig"),
        ("German", '<say-as interpret-as="time">14:30</say-as>', "vierzehn Uhr dreißig"),
        ("Spanish", '<say-as interpret-as="digits">42</say-as>', "cuatro dos"),
        ("Chinese", '<say-as interpret-as="cardinal">25</say-as>', "二十五"),
        ("Chinese", '<say-as interpret-as="ordinal">3</say-as>', "第三"),
        ("Japanese", '<say-as interpret-as="date" format="ymd">2024-03-15</say-as>', "二千二十四年三月十五日"),
        ("Russian", '<say-as interpret-as="telephone">555-12</say-as>', "пять пять пять, один два"),
    ],
)
def test_say_as_in_each_language(language, ssml, spoken):
    prepared = prepare(read_markup(f"<speak>{ssml}</speak>", language), [], 100, language, normalized=False)
    assert prepared is not None and prepared.text == spoken


# --- on a live server ---

BODY = {**GREEDY_PCM, "max_new_tokens": 8}  # greedy, seeded length


def test_normalize_on_the_server(http):
    def pcm(text: str, **extra) -> np.ndarray:
        r = http.post("/v1/audio/speech", json={**BODY, "input": text, **extra})
        assert r.status_code == 200, r.text
        return np.frombuffer(r.content, "<i2")

    digits = pcm("I have 3 cats.")
    assert np.array_equal(digits, pcm("I have three cats."))  # on by default (QWEN_TTS_NORMALIZE)
    untouched = pcm("I have 3 cats.", normalize=False)
    assert not np.array_equal(untouched, digits)
    assert np.array_equal(pcm("J'ai 3 chats.", language="French"), pcm("J'ai trois chats.", language="French"))
