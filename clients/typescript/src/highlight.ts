/**
 * Search highlights arrive as HTML-escaped fragments with matches wrapped in
 * `<em>…</em>` (schemas/openapi.json, `SearchHit.highlights`). Rendering
 * them must not trust the server beyond that: this keeps exactly `<em>` and
 * `</em>` as tags and escapes everything else, so a fragment can be assigned
 * to `innerHTML` safely.
 */

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
// The search engine's `html` encoder writes named and numeric entities
// (`&lt;`, `&#x2F;`, `&#39;`); an entity can never become markup, so any
// well-formed one is kept as it is.
const ENTITY = /^&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});/;

/** Safe HTML for one highlight fragment: only `<em>` survives as markup. */
export function highlightToHtml(fragment: string): string {
  let html = '';
  let index = 0;
  while (index < fragment.length) {
    if (fragment.startsWith('<em>', index)) {
      html += '<em>';
      index += 4;
    } else if (fragment.startsWith('</em>', index)) {
      html += '</em>';
      index += 5;
    } else if (fragment[index] === '&' && ENTITY.test(fragment.slice(index, index + 34))) {
      // Already escaped by the server: keep the entity as it is.
      const entity = ENTITY.exec(fragment.slice(index, index + 34))![0];
      html += entity;
      index += entity.length;
    } else {
      const character = fragment[index]!;
      html += ESCAPES[character] ?? character;
      index += 1;
    }
  }
  return balanceEm(html);
}

/** Drops `</em>` without an opener and closes a dangling `<em>`, so markup cannot leak past the fragment. */
function balanceEm(html: string): string {
  let depth = 0;
  const out = html.replace(/<\/?em>/g, (tag) => {
    if (tag === '<em>') {
      depth++;
      return tag;
    }
    if (depth === 0) return '';
    depth--;
    return tag;
  });
  return out + '</em>'.repeat(depth);
}
