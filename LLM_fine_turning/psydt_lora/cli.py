"""What both command-line scripts share: a Chinese --help that shows each default once."""
import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Appends "（默认：X）" to a flag's help unless the help already speaks of its default,
    and titles the usage line in Chinese."""

    def _get_help_string(self, action):
        # Python 3.11's BooleanOptionalAction appends its own English default: keep ours only
        text = (action.help or "").replace(" (default: %(default)s)", "")
        default = action.default
        if "默认" in text or "%(default)" in text or default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings and (action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction)):
            shown = {True: "开", False: "关"}.get(default, default) if isinstance(default, bool) else default
            return f"{text}（默认：{shown}）"
        return text

    def add_usage(self, usage, actions, groups, prefix=None):
        return super().add_usage(usage, actions, groups, prefix="用法：" if prefix is None else prefix)


def make_parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser whose own texts (usage, -h, group of remaining options) are Chinese too."""
    p = argparse.ArgumentParser(description=description, epilog=epilog, usage="%(prog)s [选项]",
                                formatter_class=HelpFormatter, add_help=False)
    p._optionals.title = "其他选项"
    p.add_argument("-h", "--help", action="help", help="显示本帮助并退出")
    return p
