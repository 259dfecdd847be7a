"""Regenerate the sample review set: `python data/make_reviews.py`.

Each review is stitched from hand-written fragments (an opener in the review's mood, one or two
product-specific details, an optional closer), so the set reads naturally yet stays varied.
The seed is fixed so the committed CSV and Parquet are reproducible.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import polars as pl

HERE = Path(__file__).parent
N_PER_LANG = 150
SEED = 20240611

# product -> mood -> details; moods are "pos", "neg", "mix".
EN: dict[str, dict[str, list[str]]] = {
    "wireless headphones": {
        "pos": [
            "the noise cancelling is great on the train",
            "battery lasts me a full week",
            "pairing with my laptop took two seconds",
            "bass is punchy, not muddy",
        ],
        "neg": [
            "the left earbud keeps disconnecting",
            "mic makes me sound like I'm in a tunnel",
            "they hurt my ears after an hour",
            "the case hinge snapped in week two",
        ],
        "mix": [
            "sound is fine, but the app is clunky",
            "comfortable, though the battery is meh",
            "good for calls, not great for music",
        ],
    },
    "rice cooker": {
        "pos": [
            "rice comes out fluffy every time",
            "the timer means dinner is ready when I'm home",
            "easy to clean, the pot is nonstick",
            "porridge mode is a game changer",
        ],
        "neg": [
            "the lid leaks steam all over the counter",
            "rice burns at the bottom",
            "the beeping is loud and can't be turned off",
            "display died after a month",
        ],
        "mix": [
            "cooks well but takes forever",
            "decent, though the manual is useless",
            "works, but smaller than it looks in photos",
        ],
    },
    "phone case": {
        "pos": [
            "survived a drop onto concrete",
            "slim, and the buttons still click nicely",
            "the color is exactly as pictured",
            "grippy without collecting lint",
        ],
        "neg": [
            "it turned yellow in three weeks",
            "the cutout blocks the camera flash",
            "too slippery, dropped my phone twice",
            "wireless charging stopped working with it",
        ],
        "mix": ["protective, but it's a bit bulky", "looks nice, the edges feel sharp though"],
    },
    "oolong tea": {
        "pos": [
            "floral aroma, lasts for several steeps",
            "smooth, no bitterness at all",
            "my parents loved it as a gift",
            "fresh leaves, nicely packed",
        ],
        "neg": [
            "tastes stale, like it sat in a warehouse",
            "half the bag was dust",
            "way too bitter even with short steeps",
            'the "premium" label is a joke',
        ],
        "mix": ["nice taste, overpriced for the amount", "good, but not as fragrant as last batch"],
    },
    "running shoes": {
        "pos": [
            "light and springy, ran a 10K with no blisters",
            "true to size",
            "great arch support for flat feet",
            "the grip on wet roads is excellent",
        ],
        "neg": [
            "the sole started peeling after 50 km",
            "runs a full size small",
            "heel rubs no matter how I lace them",
            "squeak on every step, it's embarrassing",
        ],
        "mix": ["comfortable, but the laces are too short", "fine for walking, not for real runs"],
    },
    "paperback novel": {
        "pos": [
            "couldn't put it down, finished in two nights",
            "the translation reads beautifully",
            "the ending made me cry, in a good way",
            "characters feel like real people",
        ],
        "neg": [
            "pages arrived bent and stained",
            "the plot drags for 200 pages",
            "print is so small I needed a magnifier",
            "typos on almost every page",
        ],
        "mix": ["strong first half, rushed ending", "good story, cheap paper"],
    },
    "desk lamp": {
        "pos": [
            "warm light that doesn't strain my eyes",
            "the dimmer goes really low",
            "sturdy base, doesn't wobble",
        ],
        "neg": [
            "flickers at low brightness",
            "the arm won't stay in position",
            "touch control triggers by itself",
        ],
        "mix": ["bright enough, but the cable is short", "looks great, buzzes a little"],
    },
    "water bottle": {
        "pos": [
            "keeps ice for a whole day",
            "no plastic taste, finally",
            "fits in my car cup holder",
        ],
        "neg": [
            "leaks in my bag every single time",
            "the paint chipped right away",
            "lid smells weird even after washing",
        ],
        "mix": ["keeps things cold, hard to clean though", "good bottle, the straw lid is flimsy"],
    },
}

ZH: dict[str, dict[str, list[str]]] = {
    "蓝牙耳机": {
        "pos": [
            "降噪效果很好，地铁上也听得清",
            "续航很顶，一周充一次",
            "连接很快，没有延迟",
            "低音饱满，人声也清楚",
        ],
        "neg": ["左耳经常断连", "通话对方说听不清我说话", "戴久了耳朵疼", "充电盒的盖子松了"],
        "mix": ["音质还行，就是App不好用", "戴着舒服，续航一般", "打电话可以，听歌一般"],
    },
    "电饭煲": {
        "pos": [
            "煮出来的米饭很香很软",
            "预约功能很方便，下班回家就能吃",
            "内胆不粘，好清洗",
            "煮粥不会溢出来",
        ],
        "neg": [
            "锅底总是糊",
            "盖子漏气，台面全是水",
            "用了一个月屏幕就不亮了",
            "提示音太吵还关不掉",
        ],
        "mix": ["饭好吃，就是煮得慢", "能用，说明书写得太简单", "容量比图片上看起来小"],
    },
    "手机壳": {
        "pos": [
            "摔了好几次手机都没事",
            "很薄，按键手感也好",
            "颜色和图片一模一样",
            "手感很好，不沾指纹",
        ],
        "neg": [
            "用了三周就发黄了",
            "开孔挡住了闪光灯",
            "太滑了，手机掉了两次",
            "装上以后无线充电不灵了",
        ],
        "mix": ["保护性不错，就是有点厚", "好看是好看，边缘有点割手"],
    },
    "乌龙茶": {
        "pos": [
            "香气很足，能泡好几泡",
            "口感顺滑，一点都不苦",
            "送给爸妈，他们很喜欢",
            "茶叶新鲜，包装也用心",
        ],
        "neg": [
            "有股陈味，不像新茶",
            "半袋都是碎末",
            "特别苦，泡短一点也苦",
            "所谓“特级”完全名不副实",
        ],
        "mix": ["味道不错，就是有点贵", "还可以，没有上次买的香"],
    },
    "跑步鞋": {
        "pos": ["很轻，跑完十公里脚也不磨", "尺码很标准", "足弓支撑很好", "雨天路面也很抓地"],
        "neg": [
            "跑了五十公里鞋底就开胶了",
            "偏小一码",
            "怎么系鞋带都磨后跟",
            "走路一直吱吱响，很尴尬",
        ],
        "mix": ["穿着舒服，鞋带有点短", "日常走路可以，跑步不太行"],
    },
    "小说": {
        "pos": ["一口气看完了，停不下来", "翻译很流畅", "结局看哭了", "人物写得很真实"],
        "neg": [
            "书到手就是折角的，还有污渍",
            "中间两百页特别拖沓",
            "字太小了，看得眼睛疼",
            "错别字很多",
        ],
        "mix": ["前半部分精彩，结尾仓促", "故事好看，纸张一般"],
    },
    "台灯": {
        "pos": ["光线柔和，不伤眼", "亮度可以调得很低", "底座很稳"],
        "neg": ["低亮度会闪", "灯臂固定不住", "触摸开关自己会亮"],
        "mix": ["够亮，就是线太短", "颜值高，有一点电流声"],
    },
    "保温杯": {
        "pos": ["冰块一天都不化", "没有塑料味", "刚好放进车里的杯架"],
        "neg": ["放包里每次都漏", "漆一下就掉了", "盖子洗了还是有怪味"],
        "mix": ["保冷不错，就是不好洗", "杯子不错，吸管盖太脆弱"],
    },
}

EN_OPEN = {
    "pos": [
        "Love it!",
        "Really happy with this.",
        "Five stars.",
        "Exceeded my expectations.",
        "Great value.",
        "Bought a second one for my sister.",
        "So good 😍",
        "",
    ],
    "neg": [
        "Disappointed.",
        "Do not buy.",
        "Waste of money.",
        "Returned it.",
        "Ugh.",
        "One star, and that's generous.",
        "Not happy 😞",
        "",
    ],
    "mix": ["It's okay.", "Mixed feelings.", "Three stars.", "Not bad, not great.", ""],
}
EN_CLOSE = {
    "pos": ["Would recommend.", "Will buy again.", "Worth every penny.", "👍", ""],
    "neg": ["Asking for a refund.", "Customer service never replied.", "Avoid.", ""],
    "mix": ["Fine for the price.", "Might return it, not sure yet.", "Depends what you need.", ""],
}
ZH_OPEN = {
    "pos": ["非常满意！", "好评！", "超出预期。", "性价比很高。", "已经回购了。", "太喜欢了😍", ""],
    "neg": ["很失望。", "别买。", "差评。", "已经退货了。", "浪费钱。", "不推荐😞", ""],
    "mix": ["一般般。", "还行吧。", "中规中矩。", "有好有坏。", ""],
}
ZH_CLOSE = {
    "pos": ["推荐购买。", "会再来买的。", "物流也很快。", "👍", ""],
    "neg": ["客服也不回消息。", "申请退款中。", "大家避雷。", ""],
    "mix": ["这个价格也就这样了。", "看个人需求吧。", "还在考虑要不要退。", ""],
}


def _sentence(detail: str) -> str:
    """Capitalise a detail fragment and end it with a full stop."""
    return detail[0].upper() + detail[1:] + "."


def _review(rng: random.Random, lang: str) -> tuple[str, str]:
    """One (product, text) pair: opener, one or two details, closer, in one mood."""
    table, opens, closes = (EN, EN_OPEN, EN_CLOSE) if lang == "en" else (ZH, ZH_OPEN, ZH_CLOSE)
    product = rng.choice(sorted(table))
    mood = rng.choices(["pos", "neg", "mix"], weights=[4, 3, 2])[0]
    pool = table[product][mood]
    details = rng.sample(pool, k=min(len(pool), rng.choice([1, 1, 2])))
    # English details are separate sentences; Chinese ones are chained with full-width commas.
    body = " ".join(map(_sentence, details)) if lang == "en" else "，".join(details) + "。"
    parts = [rng.choice(opens[mood]), body, rng.choice(closes[mood])]
    sep = " " if lang == "en" else ""
    return product, sep.join(p for p in parts if p)


def main() -> None:
    """Write reviews.csv and reviews.parquet next to this script."""
    rng = random.Random(SEED)
    langs = ["en"] * N_PER_LANG + ["zh"] * N_PER_LANG
    rng.shuffle(langs)
    rows, seen = [], set()
    for lang in langs:
        product, text = _review(rng, lang)
        while text in seen:  # duplicates would make label-agreement stats look better than they are
            product, text = _review(rng, lang)
        seen.add(text)
        rows.append({"id": len(rows) + 1, "product": product, "lang": lang, "text": text})
    with open(HERE / "reviews.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "product", "lang", "text"])
        writer.writeheader()
        writer.writerows(rows)
    pl.read_csv(HERE / "reviews.csv").write_parquet(HERE / "reviews.parquet")


if __name__ == "__main__":
    main()
