/**
 * Building page elements. Text only ever goes in as textContent, never as HTML, so
 * job data (a kind, a message, an error) can never become markup.
 */

/**
 * An element with a class and, optionally, text.
 * @param {string} tag @param {string} [className] @param {string} [text]
 * @returns {HTMLElement}
 */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
