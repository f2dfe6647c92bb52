import re

from gcrp_assets.lib.clean.markup import looks_like_markup, to_text


def test_html_keeps_paragraphs_and_emphasis_and_drops_quotes_and_images():
    raw = ('<p>Arty <b>leaned</b> on the bar.</p><p>"Hi," he <em>said</em>.<br>Then he left.</p>'
           '<blockquote>nightowl_77 wrote: old post</blockquote><img src="x.png">')
    assert to_text(raw) == 'Arty **leaned** on the bar.\n\n"Hi," he *said*.\nThen he left.'


def test_bbcode_becomes_the_same_text_as_html():
    bb = "[b]Mira[/b] drew her [i]blade[/i].\n\n[quote=ravenmoor]earlier post[/quote]She waited."
    html = "<b>Mira</b> drew her <i>blade</i>.<br><br><blockquote>earlier post</blockquote>She waited."
    assert to_text(bb) == to_text(html) == "**Mira** drew her *blade*.\n\nShe waited."


def test_links_keep_their_words_but_not_their_targets():
    assert to_text('See [url=https://forum.example/x]the map[/url] and <a href="https://x">this</a>.') == \
        "See the map and this."
    assert "forum.example" not in to_text("[url]https://forum.example/x[/url] gone")


def test_lists_and_tables():
    assert to_text("[list][*]Sword[*]Shield[/list]") == "- Sword\n- Shield"
    assert to_text("[table][tr][td]Race[/td][td]Elf[/td][/tr][/table]") == "Race | Elf"


def test_entities_mojibake_and_whitespace():
    # Mojibake is repaired to the character that was meant (a curly apostrophe), not straightened.
    assert to_text("Tom &amp; Jerry donâ€™t   stop<br><br><br><br>here") == "Tom & Jerry don’t stop\n\nhere"


def test_plain_text_is_not_parsed_as_html():
    assert not looks_like_markup("I <3 tea, a < b")
    assert to_text("I <3 tea.\n\n\n\nNext   line") == "I <3 tea.\n\nNext line"


def test_empty_markup_is_empty():
    assert to_text("<p> <br> </p>") == ""
    assert to_text("") == ""


# --- golden tests, one per cleaning rule -------------------------------------------------------------
from gcrp_assets.lib.clean.markup import (cap_punctuation_runs, fix_encoding, fix_glued_emphasis,
                                          fix_sentence_spacing, normalize_whitespace, remove_urls,
                                          valid_unicode)


def test_quoted_replies_are_removed_in_both_markups():
    assert to_text('<blockquote><b>ravenmoor wrote:</b><br>old words</blockquote><p>New words.</p>') == "New words."
    assert to_text("[quote=ravenmoor]old words[/quote]New words.") == "New words."
    assert to_text("[QUOTE]old[/QUOTE]\n\nNew words.") == "New words."


def test_images_and_embeds_are_removed():
    assert to_text('<p>Look.<img src="https://x/y.png" alt=""></p><iframe src="https://v"></iframe>') == "Look."
    assert to_text("[img]https://forum.example/a.jpg[/img]Look.") == "Look."
    assert remove_urls("Look. ![a map](https://x.y/map.png)") == "Look. "


def test_bare_urls_and_markdown_links():
    assert to_text("Map here: https://forum.example/t/12?x=1 ok") == "Map here: ok"
    assert to_text("(see www.example.com/page)") == "(see)"
    assert to_text("Read [the map](https://x.y/m) first.") == "Read the map first."
    assert to_text("(https://x.y/only-a-link)") == ""
    assert remove_urls('She said class="bbCodeBlock" hi') == "She said hi"


def test_mojibake_entities_and_controls():
    assert fix_encoding("donâ€™t") == "don’t"
    assert fix_encoding("â€œhiâ€\x9d") == "“hi”"
    assert fix_encoding("caf\u00c3\u00a9") == "café"
    assert fix_encoding("a\x00b\x07c") == "abc"
    assert to_text("Tom &amp; Jerry") == "Tom & Jerry"


def test_lone_surrogates_are_dropped_and_pairs_joined():
    assert valid_unicode("a\ud83d\ude00b\ud800c") == "a😀bc"
    assert to_text("<b>x\udc00</b>y") == "**x** y"
    to_text("\ud800").encode("utf-8")  # writable


def test_whitespace_normalization():
    assert normalize_whitespace("  a \t b\u00a0c\r\n\r\n\r\n\r\nd\u200be\ufeff ") == "a b c\n\nde"


def test_glued_emphasis_gets_a_space():
    assert fix_glued_emphasis("**Run**now") == "**Run** now"
    assert fix_glued_emphasis("then**run**") == "then **run**"
    assert fix_glued_emphasis("she said*softly*and left") == "she said *softly* and left"
    # Not glued, or not emphasis: unchanged.
    for text in ("**Run** now", "**Mira**'s blade", "***both***", "5*3*2", "- * bullet", "*a*, *b*."):
        assert fix_glued_emphasis(text) == text
    assert to_text("<b>Hi</b>there") == "**Hi** there"


def test_punctuation_runs_are_capped_at_three():
    assert cap_punctuation_runs("No!!!!!! Wait...... ----- ***** ????") == "No!!! Wait... --- *** ???"
    assert cap_punctuation_runs("Fine... Really?! --- ok!!") == "Fine... Really?! --- ok!!"


def test_missing_space_after_sentence_punctuation():
    assert fix_sentence_spacing("She left.Then he sat!Why?No") == "She left. Then he sat! Why? No"
    assert fix_sentence_spacing("wait...Then") == "wait... Then"
    for text in ("Mr.Smith", "e.g.The", "3.14", "St.Louis", "v1.2.Beta", "file.txt", "the end. Then"):
        assert fix_sentence_spacing(text) == text


def test_html_soup_does_not_crash():
    soup = "<p><b>un<i>closed <div>tags</p></b> &bogus; <<>> [b][i]x[/b] <script>alert(1)</script>"
    out = to_text(soup)
    assert "alert" not in out and "tags" in out and not re.search(r"</?[a-z]+>", out)


# --- non-English text survives cleaning (issue 11 item 10) ----------------------------------------------
from gcrp_assets.lib.clean.markup import strip_non_ascii_tags, strip_reasoning  # noqa: E402


def test_legitimate_unicode_is_not_normalized():
    for text in ("「こんにちは！」", "“curly” ‘quotes’", "Ｆｕｌｌ\u3000ｗｉｄｔｈ", "Die Straße ist groß.", "the ﬁrst ﬂoor",
                 "ｶﾀｶﾅ", "e\u0301", "Привет, мир!", "안녕하세요."):
        assert fix_encoding(text) == text
        assert to_text(text) == text
        assert to_text(f"<p>{text}</p>") == text
    assert to_text("[b]「こんにちは！」[/b]\n“curly”") == "**「こんにちは！」**\n“curly”"


def test_real_mojibake_is_still_repaired():
    assert to_text("Caf\u00c3\u00a9 au lait") == "Café au lait"
    assert to_text("â€œHello,â€\x9d she said.") == "“Hello,” she said."
    assert to_text("<p>Ã©tÃ© &amp; hiver</p>") == "été & hiver"


def test_cjk_spacing_and_emphasis_are_not_westernized():
    assert normalize_whitespace("私は\u3000\u3000学生です。 \u3000 はい") == "私は\u3000学生です。 はい"
    assert to_text("<b>粗体</b>文字") == "**粗体**文字"
    assert to_text("<b>Привет</b>мир") == "**Привет** мир"


def test_non_ascii_tags_are_markup_but_their_content_stays():
    assert to_text("<回复>你好，米拉。</回复>") == "你好，米拉。"
    assert to_text("她笑了。</结束…>") == "她笑了。"
    assert to_text("<p>Mira nodded.<结束></p>") == "Mira nodded."
    assert to_text("Мира<ответ id=2>сказала") == "Мира сказала"
    assert strip_non_ascii_tags("x <回复/> y") == "x  y"
    # Not tags: comparisons, hearts, guillemet substitutes, ASCII text.
    for text in ("a < b > c", "I <3 Zoë", "<<цитата>> и », café < 3 >", "x < 结束 > y", "<3 ü>", "a <b> c"):
        assert strip_non_ascii_tags(text) == text
    assert to_text("Zoë: a < b > c, <3") == "Zoë: a < b > c, <3"


def test_reasoning_blocks_are_removed_and_counted():
    assert strip_reasoning("<think>plan the reply</think>Mira smiled.") == ("Mira smiled.", 1)
    assert strip_reasoning("<THINKING>\na\n</Thinking>\n\nMira. <think>b</think> Dorn.") == ("\n\nMira.  Dorn.", 2)
    assert strip_reasoning("<think>cut off while reasoning") == ("", 1)
    assert strip_reasoning("Mira smiled. <think>cut off") == ("Mira smiled. ", 1)
    assert strip_reasoning("reasoning from a prefilled prompt</think>Mira smiled.") == ("Mira smiled.", 1)
    for text in ("I think so.", "<thinker>", "Mira thought hard.", ""):
        assert strip_reasoning(text) == (text, 0)
    counts = {}
    assert to_text("<p><think>a</think>Mira</p><p>Dorn</p>", counts) == "Mira\n\nDorn"
    assert counts == {"n_reasoning_blocks": 1}
    # Escaped in HTML (what a forum stores when a poster pastes the tags): found after unescaping.
    assert to_text("&lt;think&gt;x&lt;/think&gt;Mira &amp; Dorn", counts) == "Mira & Dorn"
    assert counts == {"n_reasoning_blocks": 2}
    assert to_text("[b]Mira[/b] <Think>plan</Think>waved.", counts) == "**Mira** waved."
    assert counts["n_reasoning_blocks"] == 3
    empty = {}
    assert to_text("No reasoning here.", empty) == "No reasoning here." and empty == {"n_reasoning_blocks": 0}
    assert to_text("<think>only reasoning</think>") == ""
