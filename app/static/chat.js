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
        const res = await fetch("/api/v1/feedback", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ message_id: messageId, helpful: helpful }),
        });
        if (res.ok) {
          box.querySelectorAll("button").forEach((x) => x.setAttribute("aria-pressed", String(x === b)));
          box.dataset.sent = helpful ? "up" : "down";
        }
      });
      box.appendChild(b);
    });
    li.appendChild(box);
  }

  async function ask(text) {
    add("user", text);
    let data;
    try {
      const res = await fetch("/api/v1/ask", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: text, session_id: session }),
      });
      data = await res.json();
      if (!res.ok) {
        add("bot", "Xin lỗi, câu hỏi chưa gửi được: " + (data.detail && data.detail[0] ? data.detail[0].msg : res.status));
        return;
      }
    } catch (e) {
      add("bot", "Mất kết nối. Bạn thử lại sau ít phút nhé.");
      return;
    }
    const li = add("bot", data.answer);
    li.dataset.kind = data.kind;
    if (data.kind === "clarify" && data.suggestions.length) {
      const box = document.createElement("div");
      box.className = "options";
      data.suggestions.forEach((s) => {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = s.question;
        b.addEventListener("click", () => ask(s.question));
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
