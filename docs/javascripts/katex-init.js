// Renders the equations that pymdownx.arithmatex (generic mode) leaves as
// \( ... \) and \[ ... \] spans, with the KaTeX copy shipped in assets/katex.
// Material's `document$` fires on the first load and on every instant navigation.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
});
