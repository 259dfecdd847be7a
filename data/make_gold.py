"""Regenerate the gold-labelled review sample: `python data/make_gold.py`.

120 short product reviews written by hand for this project, 60 in English and 60 in Chinese, each
with the label a careful reader gives it (`gold`) and what makes it easy or hard (`case`):

* ``plain``: the words say it (10 positive, 10 negative, 10 neutral per language);
* ``sarcasm``: praise words, a complaint meant (10 per language);
* ``mixed``: good and bad points; the gold label is the reviewer's overall verdict when there is
  one ("for the price I'd still buy them again" → positive), else ``neutral`` (10 per language);
* ``negation``: the verdict is a negated word ("not bad at all", "不推荐") (10 per language).

Gold guideline: ``positive`` / ``negative`` is the reviewer's overall verdict on the product;
``neutral`` is no verdict (facts only) or a balanced mix. The rows are in the order written; ids
are stable, so a labelled output can be joined back by ``id``.
"""

from __future__ import annotations

import csv
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE / "reviews-gold.csv"

# (product, case, gold, text)
EN: list[tuple[str, str, str, str]] = [
    ("wireless headphones", "plain", "positive",
     "Noise cancelling is superb on my commute, and the battery lasts all week. Very happy with them."),
    ("rice cooker", "plain", "positive", "Rice comes out fluffy every single time. Best kitchen purchase this year."),
    ("phone case", "plain", "positive", "Survived two drops onto tiles without a scratch. Great case."),
    ("oolong tea", "plain", "positive", "Lovely floral aroma, and it stays smooth over five steeps. Will order again."),
    ("running shoes", "plain", "positive", "Light, well cushioned, and my knees feel fine after a 10k. Love them."),
    ("desk lamp", "plain", "positive",
     "Bright, even light and the dimmer is smooth. Exactly what I needed for late work."),
    ("backpack", "plain", "positive", "Fits my laptop and gym clothes with room to spare. Excellent stitching."),
    ("electric kettle", "plain", "positive", "Boils a full jug in under three minutes and is quiet. Highly recommend."),
    ("wireless headphones", "plain", "positive", "Pairing took seconds and calls sound crystal clear. Five stars."),
    ("oolong tea", "plain", "positive", "Bought it as a gift; my parents loved it and asked where to get more."),
    ("rice cooker", "plain", "negative",
     "The lid leaks steam all over the counter and the bottom layer burns. Returning it."),
    ("phone case", "plain", "negative", "Turned yellow within three weeks and the edges are peeling. Waste of money."),
    ("running shoes", "plain", "negative", "Sole started separating after a month of light jogging. Very disappointed."),
    ("desk lamp", "plain", "negative", "Flickers constantly and the switch broke on day three. Terrible."),
    ("backpack", "plain", "negative", "Zipper jammed the first week and a strap ripped off. Poor quality."),
    ("electric kettle", "plain", "negative", "Water tastes of plastic even after ten boils. Asked for a refund."),
    ("wireless headphones", "plain", "negative",
     "Left earbud keeps disconnecting and support never answered. Awful experience."),
    ("oolong tea", "plain", "negative", "Stale, dusty leaves with no aroma at all. The worst tea I have bought."),
    ("running shoes", "plain", "negative", "Sizing runs small and gave me blisters on the first run. Bad buy."),
    ("desk lamp", "plain", "negative", "Arrived with a cracked base and missing screws. Bad packaging, bad product."),
    ("backpack", "plain", "neutral", "Arrived on Tuesday. I haven't used it yet, will update later."),
    ("electric kettle", "plain", "neutral", "Bought this to replace an older kettle of the same model."),
    ("phone case", "plain", "neutral", "It's a clear case for the 13 mini. Fits the phone."),
    ("rice cooker", "plain", "neutral", "Capacity is 1.8 litres and it comes with a measuring cup and a spatula."),
    ("oolong tea", "plain", "neutral", "Ordered the 250 g tin. Delivery took four days."),
    ("wireless headphones", "plain", "neutral", "I use them mostly for podcasts on the bus. Ordinary headphones."),
    ("running shoes", "plain", "neutral", "Ordered size 42 as usual. The colour is dark blue, as in the photos."),
    ("desk lamp", "plain", "neutral", "Standard USB-C cable, no plug included. Three brightness levels."),
    ("backpack", "plain", "neutral", "My second one from this brand; the other one is for work."),
    ("electric kettle", "plain", "neutral", "It does what any kettle does. Nothing more to say."),
    ("phone case", "sarcasm", "negative",
     "Great, it cracked the first time I dropped it. Exactly the protection I paid for."),
    ("rice cooker", "sarcasm", "negative", "Love how it turns perfect rice into charcoal. Truly a talent."),
    ("wireless headphones", "sarcasm", "negative",
     "Amazing battery life: a whole forty minutes. Can't wait to charge them again."),
    ("electric kettle", "sarcasm", "negative",
     "Perfect if you enjoy waiting ten minutes for tea, with a side of plastic flavour."),
    ("running shoes", "sarcasm", "negative", "Wonderful shoes, if blisters are your idea of a good time."),
    ("desk lamp", "sarcasm", "negative",
     "Oh nice, it lit up the room for a whole week before dying. Impressive engineering."),
    ("backpack", "sarcasm", "negative", "Five stars for the zipper, which heroically lasted until the car park."),
    ("oolong tea", "sarcasm", "negative",
     "Wow, tea that tastes exactly like the cardboard box it came in. What a treat."),
    ("wireless headphones", "sarcasm", "negative",
     "Sure, I totally enjoy hearing my own voice echo on every call. Brilliant design."),
    ("phone case", "sarcasm", "negative",
     "So happy it blocks the camera flash. Who needs photos at night anyway?"),
    ("wireless headphones", "mixed", "neutral",
     "Sound is fine and they are comfortable, but the app is clunky and the case feels cheap."),
    ("rice cooker", "mixed", "neutral", "Cooks really well but takes almost an hour. Good rice, slow dinner."),
    ("running shoes", "mixed", "positive",
     "The sole is wearing fast, but they are comfortable and for the price I'd still buy them again."),
    ("desk lamp", "mixed", "negative",
     "The light is great, but the clamp broke within a week and now it sits crooked. Not worth the hassle."),
    ("backpack", "mixed", "neutral", "Looks nice and holds a lot; the side pocket is tiny and the straps are thin."),
    ("oolong tea", "mixed", "positive",
     "The first steep is a bit bitter, but the second and third are wonderful. Would buy again."),
    ("electric kettle", "mixed", "negative",
     "Boils fast and looks great, but after two months the lid no longer closes and it leaks. Disappointed."),
    ("phone case", "mixed", "neutral", "Protective but bulky; good grip, but it collects lint. Overall okay."),
    ("wireless headphones", "mixed", "neutral", "Great for calls, mediocre for music. Depends what you need them for."),
    ("rice cooker", "mixed", "neutral",
     "The timer is handy and cleaning is easy, yet the inner pot already has scratches. Mixed feelings."),
    ("electric kettle", "negation", "positive", "Not bad at all: quick, quiet and no plastic smell."),
    ("running shoes", "negation", "negative", "I can't say I love them; they never stopped pinching my toes."),
    ("phone case", "negation", "positive", "Never had a single problem with it in a year of daily use."),
    ("desk lamp", "negation", "positive", "Doesn't flicker, doesn't buzz, doesn't disappoint."),
    ("oolong tea", "negation", "negative", "Not worth the money; there's nothing special about the taste."),
    ("backpack", "negation", "positive", "No complaints after six months of daily commuting."),
    ("rice cooker", "negation", "neutral", "It isn't terrible, it isn't great; it just cooks rice."),
    ("wireless headphones", "negation", "negative",
     "Not as good as the reviews say, and not comfortable for more than an hour."),
    ("electric kettle", "negation", "negative", "I wouldn't recommend it; the handle gets too hot to hold."),
    ("running shoes", "negation", "positive", "Never thought cheap shoes could be this comfortable. No regrets."),
]

ZH: list[tuple[str, str, str, str]] = [
    ("蓝牙耳机", "plain", "positive", "降噪效果很好，地铁上也很安静，续航一周没问题，非常满意。"),
    ("电饭煲", "plain", "positive", "煮出来的米饭粒粒分明，预约功能很方便，好评！"),
    ("手机壳", "plain", "positive", "手感很好，摔了两次手机一点事都没有，推荐。"),
    ("乌龙茶", "plain", "positive", "香气浓郁，回甘明显，泡五六泡还有味道，会回购。"),
    ("跑步鞋", "plain", "positive", "很轻，缓震不错，跑完十公里膝盖也不疼，喜欢。"),
    ("台灯", "plain", "positive", "光线柔和不刺眼，调光顺滑，晚上看书很舒服。"),
    ("背包", "plain", "positive", "容量很大，电脑和换洗衣服都装得下，做工也很好。"),
    ("电水壶", "plain", "positive", "烧水很快，声音也小，颜值高，值得购买。"),
    ("蓝牙耳机", "plain", "positive", "连接很稳定，通话清楚，佩戴舒服，五星好评。"),
    ("乌龙茶", "plain", "positive", "送给爸妈的，他们特别喜欢，包装也很精致。"),
    ("电饭煲", "plain", "negative", "锅盖漏气，底部米饭烧焦了，已经申请退货。"),
    ("手机壳", "plain", "negative", "用了三个星期就发黄了，边缘还开胶，太差了。"),
    ("跑步鞋", "plain", "negative", "才跑了一个月鞋底就开胶了，非常失望。"),
    ("台灯", "plain", "negative", "一直闪，开关第三天就坏了，垃圾产品。"),
    ("背包", "plain", "negative", "拉链第一周就卡住了，肩带也断了，质量很差。"),
    ("电水壶", "plain", "negative", "烧了十几次水还是有塑料味，后悔买了。"),
    ("蓝牙耳机", "plain", "negative", "左耳经常断连，客服也不回复，差评。"),
    ("乌龙茶", "plain", "negative", "茶叶陈旧，一股灰尘味，完全没有香气，浪费钱。"),
    ("跑步鞋", "plain", "negative", "尺码偏小，第一次跑就磨出水泡，很失望。"),
    ("台灯", "plain", "negative", "收到时底座裂了，螺丝也少了，包装太差。"),
    ("背包", "plain", "neutral", "周二到的货，还没用，用了再来追评。"),
    ("电水壶", "plain", "neutral", "买来替换家里同款的旧水壶。"),
    ("手机壳", "plain", "neutral", "透明款，适用于13 mini，尺寸对得上。"),
    ("电饭煲", "plain", "neutral", "容量1.8升，附带量杯和饭勺。"),
    ("乌龙茶", "plain", "neutral", "买的250克罐装，快递四天到。"),
    ("蓝牙耳机", "plain", "neutral", "主要坐公交时听播客用，普普通通的耳机。"),
    ("跑步鞋", "plain", "neutral", "按平时的42码买的，颜色是深蓝色，和图片一样。"),
    ("台灯", "plain", "neutral", "标配USB-C线，不带插头，三档亮度。"),
    ("背包", "plain", "neutral", "这是我买的第二个这个牌子的包，另一个上班用。"),
    ("电水壶", "plain", "neutral", "就是一个普通的水壶，没什么特别的。"),
    ("手机壳", "sarcasm", "negative", "太好了，第一次掉地上就裂了，保护得真到位。"),
    ("电饭煲", "sarcasm", "negative", "真厉害，能把好好的米煮成锅巴炭，佩服佩服。"),
    ("蓝牙耳机", "sarcasm", "negative", "续航真棒，足足四十分钟，天天充电好开心哦。"),
    ("电水壶", "sarcasm", "negative", "很好，烧一壶水十分钟，还附赠塑料味，真是物超所值。"),
    ("跑步鞋", "sarcasm", "negative", "好鞋，穿一次送一堆水泡，谢谢商家。"),
    ("台灯", "sarcasm", "negative", "不错不错，亮了一个星期就寿终正寝了，真是良心产品。"),
    ("背包", "sarcasm", "negative", "拉链质量一流，坚持到了停车场才坏。"),
    ("乌龙茶", "sarcasm", "negative", "哇，喝出了纸箱的味道，真是惊喜。"),
    ("蓝牙耳机", "sarcasm", "negative", "通话时能听到自己的回声，这设计太贴心了。"),
    ("手机壳", "sarcasm", "negative", "挡住闪光灯，晚上再也不用拍照了，真是省心。"),
    ("蓝牙耳机", "mixed", "neutral", "音质还行，戴着也舒服，但是APP很难用，充电盒做工一般。"),
    ("电饭煲", "mixed", "neutral", "煮饭好吃，就是太慢了，差不多要一个小时。"),
    ("跑步鞋", "mixed", "positive", "鞋底磨得有点快，不过穿着舒服，这个价格还是值得的，会回购。"),
    ("台灯", "mixed", "negative", "灯光很好，可是夹子一周就坏了，现在歪着放，不值这个折腾。"),
    ("背包", "mixed", "neutral", "外观好看，装得多，但侧袋太小，肩带有点细。"),
    ("乌龙茶", "mixed", "positive", "第一泡有点苦，第二第三泡非常好喝，还会再买。"),
    ("电水壶", "mixed", "negative", "烧水快，颜值也高，可两个月后盖子就关不严了，一直漏水，很失望。"),
    ("手机壳", "mixed", "neutral", "保护性好但有点厚，防滑但容易沾灰，总体还行。"),
    ("蓝牙耳机", "mixed", "neutral", "打电话很好，听音乐一般，看你用来干什么。"),
    ("电饭煲", "mixed", "neutral", "预约很方便，也好清洗，但内胆已经有划痕了，心情复杂。"),
    ("电水壶", "negation", "positive", "一点都不差，烧水快，安静，也没有异味。"),
    ("跑步鞋", "negation", "negative", "说不上喜欢，一直挤脚趾，穿着不舒服。"),
    ("手机壳", "negation", "positive", "用了一年，从来没出过问题。"),
    ("台灯", "negation", "positive", "不闪不响，没让我失望。"),
    ("乌龙茶", "negation", "negative", "不值这个价，味道没什么特别的。"),
    ("背包", "negation", "positive", "每天通勤背了半年，没有任何不满。"),
    ("电饭煲", "negation", "neutral", "不算差也不算好，就是能煮饭。"),
    ("蓝牙耳机", "negation", "negative", "没有评论说的那么好，戴一个小时就不舒服。"),
    ("电水壶", "negation", "negative", "不推荐，把手烫得拿不住。"),
    ("跑步鞋", "negation", "positive", "没想到便宜的鞋也能这么舒服，不后悔。"),
]


def rows() -> list[dict[str, str]]:
    out = []
    for lang, table in (("en", EN), ("zh", ZH)):
        for product, case, gold, text in table:
            out.append({"id": f"g{len(out) + 1:03d}", "product": product, "lang": lang, "case": case,
                        "text": text, "gold": gold})
    return out


def main() -> None:
    table = rows()
    assert len({r["text"] for r in table}) == len(table), "texts must be distinct"
    with OUT.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    print(f"wrote {len(table)} rows to {OUT}")


if __name__ == "__main__":
    main()
