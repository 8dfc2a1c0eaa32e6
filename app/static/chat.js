// The chat page: sends questions to /api/v1/ask, shows clarify options as buttons and
// one-tap feedback (thumbs up / down) on answers. One session id per browser tab.
(function () {
  "use strict";
  const log = document.getElementById("log");
  const form = document.getElementById("ask");
  const input = document.getElementById("text");
  const sessionKey = "vssbot-session";
  let session = sessionStorage.getItem(sessionKey);
  if (!session) {
    session = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).replace(/-/g, "");
    sessionStorage.setItem(sessionKey, session);
  }

  function add(cls, text) {
    const li = document.createElement("li");
    li.className = "msg " + cls;
    li.textContent = text;
    log.appendChild(li);
    li.scrollIntoView({ block: "end" });
    return li;
  }

  function rating(li, messageId) {
    const box = document.createElement("div");
    box.className = "rate";
    box.append("Câu trả lời có hữu ích không?");
    [["👍", true, "Hữu ích"], ["👎", false, "Chưa hữu ích"]].forEach(([icon, helpful, label]) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = icon;
      b.setAttribute("aria-label", label);
      b.setAttribute("aria-pressed", "false");
      b.addEventListener("click", async () => {
        try {
          const res = await fetch("/api/v1/feedback", {
            method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ message_id: messageId, helpful: helpful }),
          });
          if (!res.ok) throw new Error(String(res.status));
          box.querySelectorAll("button").forEach((x) => x.setAttribute("aria-pressed", String(x === b)));
          box.dataset.sent = helpful ? "up" : "down";
        } catch (e) {
          box.title = "Chưa gửi được đánh giá, bạn thử lại nhé.";
        }
      });
      box.appendChild(b);
    });
    li.appendChild(box);
  }

  const sendButton = form.querySelector("button");

  function busy(on) {
    sendButton.disabled = on;
    input.disabled = on;
    if (!on) input.focus();
  }

  async function ask(text, intentId) {
    add("user", text);
    busy(true);
    let data;
    try {
      const body = { text: text, session_id: session };
      if (intentId) body.intent_id = intentId;
      const res = await fetch("/api/v1/ask", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      data = await res.json();
      if (!res.ok) {
        const detail = Array.isArray(data.detail) && data.detail[0] ? data.detail[0].msg : data.detail || res.status;
        add("bot", "Xin lỗi, câu hỏi chưa gửi được: " + detail);
        return;
      }
    } catch (e) {
      add("bot", "Mất kết nối. Bạn thử lại sau ít phút nhé.");
      return;
    } finally {
      busy(false);
    }
    const clarify = data.kind === "clarify" && data.suggestions.length;
    // the options are buttons here, so the numbered list of the plain-text answer is not repeated
    const li = add("bot", clarify ? data.answer.split("\n")[0] : data.answer);
    li.dataset.kind = data.kind;
    if (clarify) {
      const box = document.createElement("div");
      box.className = "options";
      data.suggestions.forEach((s) => {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = s.question;
        b.addEventListener("click", () => {
          box.querySelectorAll("button").forEach((x) => { x.disabled = true; });
          ask(s.question, s.intent_id);
        });
        box.appendChild(b);
      });
      li.appendChild(box);
    } else if (data.kind === "faq") {
      rating(li, data.message_id);
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    ask(text);
  });
})();
