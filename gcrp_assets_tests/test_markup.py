from gcrp_assets.lib.markup import looks_like_markup, to_text


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
    assert to_text("Tom &amp; Jerry donâ€™t   stop<br><br><br><br>here") == "Tom & Jerry don't stop\n\nhere"


def test_plain_text_is_not_parsed_as_html():
    assert not looks_like_markup("I <3 tea, a < b")
    assert to_text("I <3 tea.\n\n\n\nNext   line") == "I <3 tea.\n\nNext line"


def test_empty_markup_is_empty():
    assert to_text("<p> <br> </p>") == ""
    assert to_text("") == ""
