// Masks in the browser: COCO segmentations decoded into box-local bitmaps, their IoU,
// their outlines, and the instance-id PNG the service's ?output=png writes.
//
// A mask is {x0, y0, w, h, data, area}: `data` is a row-major Uint8Array (1 = inside) of the
// mask's bounding box only, so 50 instances of a 2048x1024 image cost their areas, not 50
// full frames. COCO RLE runs go down columns (Fortran order), starting with background.

/** The run lengths of an RLE: pycocotools' compressed string, or a plain list. */
export function rleCounts(counts) {
  if (Array.isArray(counts)) return Uint32Array.from(counts);
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      if (p >= counts.length) throw new Error("RLE counts string ends inside a number");
      const c = counts.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];  // counts after the second are deltas
    runs.push(x);
  }
  return Uint32Array.from(runs);
}

const EMPTY = Object.freeze({ x0: 0, y0: 0, w: 0, h: 0, data: new Uint8Array(0), area: 0 });

/** Decode {size: [h, w], counts} into a box-local mask. */
export function decodeRle(rle) {
  const [height, width] = rle.size;
  const runs = rleCounts(rle.counts);
  let x0 = width, x1 = -1, y0 = height, y1 = -1, pos = 0;
  for (let i = 0; i < runs.length; i++) {
    const start = pos;
    pos += runs[i];
    if (i % 2 === 0 || runs[i] === 0) continue;
    const c0 = Math.floor(start / height), c1 = Math.floor((pos - 1) / height);
    x0 = Math.min(x0, c0);
    x1 = Math.max(x1, c1);
    if (c0 === c1) {
      y0 = Math.min(y0, start - c0 * height);
      y1 = Math.max(y1, pos - 1 - c1 * height);
    } else {
      y0 = 0;
      y1 = height - 1;
    }
  }
  if (pos > height * width) throw new Error(`RLE covers ${pos} pixels, more than its ${height}x${width} size`);
  if (x1 < 0) return EMPTY;
  const w = x1 - x0 + 1, h = y1 - y0 + 1, data = new Uint8Array(w * h);
  let area = 0;
  pos = 0;
  for (let i = 0; i < runs.length; i++) {
    let s = pos;
    const e = pos + runs[i];
    pos = e;
    if (i % 2 === 0) continue;
    area += runs[i];
    while (s < e) {  // one column segment of the run at a time
      const col = Math.floor(s / height), r0 = s - col * height, r1 = Math.min(height, r0 + (e - s));
      for (let r = r0, o = (r0 - y0) * w + (col - x0); r < r1; r++, o += w) data[o] = 1;
      s += r1 - r0;
    }
  }
  return { x0, y0, w, h, data, area };
}

/** Polygons [[x, y, ...], ...] in image pixels, filled by the canvas (non-zero rule; a pixel
 * is inside when at least half of it is covered): within a pixel of pycocotools' rasteriser. */
export function rasterPolygons(polygons, height, width) {
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
  for (const poly of polygons) {
    for (let i = 0; i + 1 < poly.length; i += 2) {
      minX = Math.min(minX, poly[i]); maxX = Math.max(maxX, poly[i]);
      minY = Math.min(minY, poly[i + 1]); maxY = Math.max(maxY, poly[i + 1]);
    }
  }
  const x0 = Math.max(0, Math.floor(minX)), y0 = Math.max(0, Math.floor(minY));
  const x1 = Math.min(width - 1, Math.ceil(maxX)), y1 = Math.min(height - 1, Math.ceil(maxY));
  if (!(x1 >= x0 && y1 >= y0)) return EMPTY;
  const w = x1 - x0 + 1, h = y1 - y0 + 1;
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  for (const poly of polygons) {
    for (let i = 0; i + 1 < poly.length; i += 2) {
      const x = poly[i] - x0, y = poly[i + 1] - y0;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.closePath();
  }
  ctx.fill("nonzero");
  const rgba = ctx.getImageData(0, 0, w, h).data, data = new Uint8Array(w * h);
  let area = 0;
  for (let i = 0; i < data.length; i++) if (rgba[4 * i + 3] >= 128) { data[i] = 1; area++; }
  return area ? { x0, y0, w, h, data, area } : EMPTY;
}

/** Any COCO segmentation (compressed or plain RLE, polygons) of an image of this size. */
export function decodeSegmentation(seg, height, width) {
  if (Array.isArray(seg)) return rasterPolygons(seg, height, width);
  if (seg && Array.isArray(seg.size) && seg.counts !== undefined) {
    if (seg.size[0] !== height || seg.size[1] !== width) {
      throw new Error(`an RLE of size ${seg.size[0]}x${seg.size[1]} does not fit the ${height}x${width} image`);
    }
    return decodeRle(seg);
  }
  throw new Error("a segmentation is neither an RLE {size, counts} nor a list of polygons");
}

/** Pixels inside both masks. */
export function intersection(a, b) {
  const ix0 = Math.max(a.x0, b.x0), iy0 = Math.max(a.y0, b.y0);
  const ix1 = Math.min(a.x0 + a.w, b.x0 + b.w), iy1 = Math.min(a.y0 + a.h, b.y0 + b.h);
  let n = 0;
  for (let y = iy0; y < iy1; y++) {
    let oa = (y - a.y0) * a.w + (ix0 - a.x0), ob = (y - b.y0) * b.w + (ix0 - b.x0);
    for (let x = ix0; x < ix1; x++, oa++, ob++) n += a.data[oa] & b.data[ob];
  }
  return n;
}

/** Intersection over union; two empty masks count as equal (1). */
export function maskIoU(a, b) {
  const inter = intersection(a, b), union = a.area + b.area - inter;
  return union ? inter / union : 1;
}

/** Paint a mask's outline (inside pixels with a 4-neighbour outside, the image border
 * counting as outside) into `outline`, and its inside into `fill`: Uint32 RGBA views of
 * image-sized layers; later instances paint over earlier ones. */
export function paintMask(mask, imageWidth, imageHeight, colour, outline, fill) {
  const { x0, y0, w, h, data } = mask;
  for (let y = 0; y < h; y++) {
    const row = y * w, iy = y0 + y;
    for (let x = 0; x < w; x++) {
      if (!data[row + x]) continue;
      const ix = x0 + x, at = iy * imageWidth + ix;
      const edge = ix === 0 || iy === 0 || ix === imageWidth - 1 || iy === imageHeight - 1
        || x === 0 || !data[row + x - 1] || x === w - 1 || !data[row + x + 1]
        || y === 0 || !data[row - w + x] || y === h - 1 || !data[row + w + x];
      if (edge) outline[at] = colour; else fill[at] = colour;
    }
  }
}

// ------------------------------------------------------------------ instance-id PNG

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, body) {
  const out = new Uint8Array(12 + body.length), view = new DataView(out.buffer);
  view.setUint32(0, body.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(body, 8);
  view.setUint32(8 + body.length, crc32(out.subarray(4, 8 + body.length)));
  return out;
}

/** The instance-id PNG of `masks` (pixel k = k-th instance, 1-based; 16-bit above 255
 * instances; where masks overlap the earlier instance wins): the same file as the service's
 * ?output=png for the same masks, so a download needs no second request. */
export async function idPng(masks, height, width) {
  const wide = masks.length > 255, bpp = wide ? 2 : 1, stride = 1 + width * bpp;
  const raw = new Uint8Array(stride * height);  // each row: filter byte 0, then the ids
  for (let k = masks.length - 1; k >= 0; k--) {
    const { x0, y0, w, h, data } = masks[k], id = k + 1;
    for (let y = 0; y < h; y++) {
      const base = (y0 + y) * stride + 1;
      for (let x = 0; x < w; x++) {
        if (!data[y * w + x]) continue;
        const at = base + (x0 + x) * bpp;
        if (wide) { raw[at] = id >> 8; raw[at + 1] = id & 0xff; } else raw[at] = id;
      }
    }
  }
  const zlib = new Uint8Array(await new Response(
    new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
  const header = new Uint8Array(13), hv = new DataView(header.buffer);
  hv.setUint32(0, width);
  hv.setUint32(4, height);
  header.set([bpp * 8, 0, 0, 0, 0], 8);  // bit depth, greyscale, deflate, no filter, no interlace
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob([signature, chunk("IHDR", header), chunk("IDAT", zlib), chunk("IEND", new Uint8Array(0))],
    { type: "image/png" });
}
