"""A tiny Markdown → reStructuredText converter for ``benchmarks/RESULTS.md``.

It knows what that file uses: ATX headings, paragraphs, ``-``/``*``/``1.``
lists, fenced code blocks, pipe tables, block quotes (as plain paragraphs) and the inline forms
``code``, **bold**, *italic*, [links](url) and images. Anything else is kept
as text with the reST-special characters escaped, so an unexpected construct
degrades to plain text instead of a Sphinx warning (the docs build with -W).
"""

import re

_HEADING_CHARS = "=-~^\"'"
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_BULLET = re.compile(r"^(\s*)([-*+])\s+(.*)$")
_ENUM = re.compile(r"^(\s*)(\d+)[.)]\s+(.*)$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)[^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)[^)]*\)")


def _escape(text):
    """Escape characters that start reST inline markup."""
    text = text.replace("\\", "\\\\")
    for ch in "*`|_[]<>":
        text = text.replace(ch, "\\" + ch)
    return text


_BEFORE_OK = set("-:/'\"<([{")
_AFTER_OK = set("-.,:;!?/'\")]}>")


def _join(pieces):
    """Join (is_markup, text) pieces, separating markup from adjacent text."""
    out = ""
    prev_markup = False
    for is_markup, text in pieces:
        if not text:
            continue
        if out and is_markup and not (out[-1].isspace() or out[-1] in _BEFORE_OK):
            out += "\\ "
        elif out and prev_markup and not (text[0].isspace() or text[0] in _AFTER_OK):
            out += "\\ "
        out += text
        prev_markup = is_markup
    return out


def _inline(text):
    """Convert the inline Markdown of one line/cell to reST."""
    pieces = []
    pos = 0
    # code spans, images and links first, then bold/italic in the plain text
    pattern = re.compile("|".join(f"(?:{p.pattern})" for p in (_CODE_SPAN, _IMAGE, _LINK)))
    emph = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"
                      r"|(?<![\w*])([*_])(?=\S)(.+?)(?<=\S)\3(?![\w*])")

    def plain(chunk):
        last = 0
        for m in emph.finditer(chunk):
            pieces.append((False, _escape(chunk[last:m.start()])))
            if m.group(2) is not None:
                pieces.append((True, f"**{_escape(m.group(2))}**"))
            else:
                pieces.append((True, f"*{_escape(m.group(4))}*"))
            last = m.end()
        pieces.append((False, _escape(chunk[last:])))

    for m in pattern.finditer(text):
        plain(text[pos:m.start()])
        tok = m.group(0)
        if (c := _CODE_SPAN.fullmatch(tok)) is not None:
            code = c.group(2).strip()
            if code and "``" not in code and not code.endswith("`"):
                pieces.append((True, f"``{code}``"))
            else:
                pieces.append((False, _escape(code)))
        elif (i := _IMAGE.fullmatch(tok)) is not None:
            plain(i.group(1) or "image")
        else:
            li = _LINK.fullmatch(tok)
            label, url = li.group(1), li.group(2)
            if re.match(r"^[a-z]+://", url):
                label = re.sub(r"[`<>\\]", "", label).strip() or url
                pieces.append((True, f"`{label} <{url}>`__"))
            else:  # relative link: keep the label only
                plain(label)
        pos = m.end()
    plain(text[pos:])
    return _join(pieces)


def _split_row(line):
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [c.strip().replace("\\|", "|") for c in cells]


def _table(header, rows):
    n = len(header)
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header] + rows:
        row = (row + [""] * n)[:n]
        for k, cell in enumerate(row):
            cell = _inline(cell) if cell else ""
            if cell.startswith(("- ", "* ", "+ ")) or re.match(r"^\d+[.)]\s", cell):
                cell = "\\" + cell
            lead = "   * - " if k == 0 else "     - "
            lines.append((lead + cell).rstrip())
    return lines + [""]


def markdown_to_rst(md, top_level=0, image_path=None):
    """Convert Markdown text to reST.

    Parameters
    ----------
    md : str
        Markdown source.
    top_level : int
        Heading level given to Markdown ``#`` (0 gives ``=`` underlines, 1
        gives ``-``, ...), so that the result can be included below a title.
    image_path : callable | None
        Maps the URL of an image that stands alone in a paragraph to a path
        usable by ``.. figure::`` (or None to keep only its alt text).

    Returns
    -------
    rst : str
    """
    lines = md.replace("\r\n", "\n").replace("\t", "    ").split("\n")
    out = []
    i = 0
    levels = {}

    def blank():
        if out and out[-1] != "":
            out.append("")

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            blank()
            i += 1
            continue
        if stripped.startswith("<!--"):  # HTML comment
            while i < len(lines) and "-->" not in lines[i]:
                i += 1
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(2)
            lang = fence.group(3) or "text"
            i += 1
            code = []
            while i < len(lines) and not lines[i].strip().startswith(marker):
                code.append(lines[i])
                i += 1
            i += 1
            blank()
            out += [f".. code-block:: {lang}", ""]
            out += [("   " + c).rstrip() for c in code] or ["   "]
            out.append("")
            continue
        heading = _HEADING.match(line)
        if heading:
            md_level = len(heading.group(1))
            if md_level not in levels:
                levels[md_level] = min(top_level + len(levels), len(_HEADING_CHARS) - 1)
            title = _inline(heading.group(2))
            blank()
            out += [title, _HEADING_CHARS[levels[md_level]] * max(len(title), 3), ""]
            i += 1
            continue
        if "|" in stripped and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]):
            header = _split_row(line)
            i += 2
            rows = []
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_split_row(lines[i]))
                i += 1
            blank()
            out += _table(header, rows)
            continue
        if re.match(r"^(\*\s*){3,}$|^(-\s*){3,}$|^(_\s*){3,}$", stripped):
            blank()
            out += ["----", ""]
            i += 1
            continue
        bullet, enum = _BULLET.match(line), _ENUM.match(line)
        if bullet or enum:
            m = bullet or enum
            indent = len(m.group(1))
            marker = "-" if bullet else f"{m.group(2)}."
            nest = "  " * (indent // 2)
            blank()
            text = [m.group(3)]
            i += 1
            while i < len(lines) and lines[i].strip() and not _BULLET.match(lines[i]) \
                    and not _ENUM.match(lines[i]) and lines[i].startswith(" "):
                text.append(lines[i].strip())
                i += 1
            body = _inline(" ".join(text))
            out += [f"{nest}{marker} {body}", ""]
            continue
        if stripped.startswith(">"):
            quote = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quote.append(lines[i].strip()[1:].strip())
                i += 1
            blank()
            out += [_inline(" ".join(quote)), ""]
            continue
        # paragraph: gather until a blank line or another block starts
        para = [stripped]
        i += 1
        while i < len(lines):
            nxt = lines[i]
            s = nxt.strip()
            if not s or _HEADING.match(nxt) or _FENCE.match(nxt) or _BULLET.match(nxt) \
                    or _ENUM.match(nxt) or s.startswith(">") or \
                    ("|" in s and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1])):
                break
            para.append(s)
            i += 1
        blank()
        text = " ".join(para)
        text = re.sub(r"\s{2,}$", "", text)
        img = _IMAGE.fullmatch(text)
        path = image_path(img.group(2)) if img and image_path is not None else None
        if path:
            out += [f".. figure:: {path}", "   :width: 100%", ""]
            if img.group(1):
                out += ["   " + _inline(img.group(1)), ""]
            continue
        out.append(_inline(text))
        out.append("")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"
