"""What a designed voice reads aloud before it is kept (``POST /v1/audio/voices`` with a
description and no ``sample_text``): a few plain sentences per language, about ten seconds
of speech, which is what in-context cloning wants from its reference."""

from __future__ import annotations

import re

SAMPLE_SCRIPTS = {
    "English": (
        "Hello, and thank you for listening. This short recording lets you hear how my voice "
        "sounds when I read a few ordinary sentences at an easy pace."
    ),
    "Chinese": "你好，谢谢你的收听。这段简短的录音让你听听我用平常的语速朗读几句普通的话时，声音是什么样子。",
    "Japanese": (
        "こんにちは、聞いてくれてありがとう。"
        "この短い録音では、普通の文をいくつかゆっくり読んだときの私の声を聞くことができます。"
    ),
    "Korean": (
        "안녕하세요, 들어 주셔서 감사합니다. 이 짧은 녹음에서는 제가 평범한 문장 몇 개를 "
        "편안한 속도로 읽을 때 목소리가 어떻게 들리는지 알 수 있습니다."
    ),
    "French": (
        "Bonjour, et merci de votre écoute. Ce court enregistrement vous permet d'entendre ma voix "
        "lorsque je lis quelques phrases ordinaires, sans me presser."
    ),
    "German": (
        "Hallo und danke fürs Zuhören. Diese kurze Aufnahme zeigt, wie meine Stimme klingt, "
        "wenn ich ein paar gewöhnliche Sätze in ruhigem Tempo vorlese."
    ),
    "Spanish": (
        "Hola, y gracias por escuchar. Esta breve grabación te permite oír cómo suena mi voz "
        "cuando leo algunas frases sencillas con calma."
    ),
    "Italian": (
        "Ciao, e grazie per l'ascolto. Questa breve registrazione ti fa sentire come suona la mia "
        "voce quando leggo qualche frase semplice con calma."
    ),
    "Portuguese": (
        "Olá, e obrigado por ouvir. Esta breve gravação permite ouvir como soa a minha voz "
        "quando leio algumas frases simples com calma."
    ),
    "Russian": (
        "Здравствуйте, спасибо, что слушаете. Эта короткая запись позволяет услышать, как звучит "
        "мой голос, когда я спокойно читаю несколько обычных фраз."
    ),
}

# Scripts that tell a language from a description written in it (checked in this order:
# Japanese text mixes kana with Chinese characters).
_WRITING = [
    ("Korean", re.compile(r"[\uac00-\ud7a3\u1100-\u11ff]")),
    ("Japanese", re.compile(r"[\u3040-\u30ff]")),
    ("Chinese", re.compile(r"[\u4e00-\u9fff]")),
    ("Russian", re.compile(r"[\u0400-\u04ff]")),
]


def script_language(language: str, description: str) -> str:
    """The language a designed voice speaks its sample in: the one asked for, or with
    ``Auto`` the one the description is written in (English for Latin script)."""
    if language != "Auto":
        return language
    return next((name for name, writing in _WRITING if writing.search(description)), "English")


def sample_script(language: str) -> str:
    """The default sample text of a language (``script_language``'s answer)."""
    return SAMPLE_SCRIPTS.get(language, SAMPLE_SCRIPTS["English"])
